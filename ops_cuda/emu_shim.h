// Host shim that lets ops_cuda/*.cu compile as plain C++ (g++) for CPU emulation.
//
// A "launch" runs every thread of every block sequentially on the calling host thread. That is
// exact for kernels that follow common.cuh's rules (no barriers, no shared memory, no warp
// intrinsics); __syncthreads is a compile error here so a kernel that needs it cannot slip in.
// (__shared__ is left undefined, so it fails to compile too.) atomicAdd is a plain read-modify-write because nothing runs concurrently.
#pragma once
#include <math.h>

#include <cstddef>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
};

namespace cvo_emu {
inline thread_local dim3 thread_idx = {0, 0, 0};
inline thread_local dim3 block_idx = {0, 0, 0};
inline thread_local dim3 block_dim = {1, 1, 1};
inline thread_local dim3 grid_dim = {1, 1, 1};
}  // namespace cvo_emu

#define threadIdx (cvo_emu::thread_idx)
#define blockIdx (cvo_emu::block_idx)
#define blockDim (cvo_emu::block_dim)
#define gridDim (cvo_emu::grid_dim)
#define __syncthreads() static_assert(false, "emulation runs threads one by one: no barriers")

inline float atomicAdd(float* addr, float v) {
  float old = *addr;
  *addr = old + v;
  return old;
}
inline double atomicAdd(double* addr, double v) {
  double old = *addr;
  *addr = old + v;
  return old;
}

namespace cvo_emu {
template <typename... A, std::size_t... I>
void call(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}

// params follows cuLaunchKernel's convention: params[i] points at the value of argument i.
template <typename... A>
void launch(void (*kernel)(A...), unsigned grid, unsigned block, void** params) {
  grid_dim = {grid, 1, 1};
  block_dim = {block, 1, 1};
  for (unsigned b = 0; b < grid; ++b) {
    for (unsigned t = 0; t < block; ++t) {
      block_idx = {b, 0, 0};
      thread_idx = {t, 0, 0};
      call(kernel, params, std::index_sequence_for<A...>{});
    }
  }
}
}  // namespace cvo_emu
