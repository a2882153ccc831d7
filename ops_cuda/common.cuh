// Shared helpers for the ops_cuda kernels.
//
// Every kernel here is written so that the same source compiles three ways:
//   * NVRTC (through CuPy on a GPU, or the low-level binding in the compile tests);
//   * g++ with emu_shim.h (CV_OPS_EMULATION defined), where a launcher loops over the grid.
// Rules that keep the second way honest: grid-stride loops over a flat index, no warp
// shuffles, no shared memory or __syncthreads (the shim turns __syncthreads into a compile
// error), atomics only through atomicAdd on float/double.
#pragma once

#ifndef CV_OPS_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

typedef long long i64;

// Accumulation type: float for half/bfloat16/float, double for double.
template <typename T> struct acc_type { typedef float type; };
template <> struct acc_type<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T>
__device__ __forceinline__ T from_acc(typename acc_type<T>::type v) { return static_cast<T>(v); }

#ifndef CV_OPS_EMULATION
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
#endif

// Math overloads that pick the float or double C function explicitly.
__device__ __forceinline__ float cvo_exp(float x) { return expf(x); }
__device__ __forceinline__ double cvo_exp(double x) { return exp(x); }
__device__ __forceinline__ float cvo_log(float x) { return logf(x); }
__device__ __forceinline__ double cvo_log(double x) { return log(x); }
__device__ __forceinline__ float cvo_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double cvo_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float cvo_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double cvo_pow(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float cvo_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double cvo_abs(double x) { return fabs(x); }

template <typename A> __device__ __forceinline__ A cvo_min(A a, A b) { return b < a ? b : a; }
template <typename A> __device__ __forceinline__ A cvo_max(A a, A b) { return a < b ? b : a; }
// sign with sign(0) = 0, as torch.sgn (the gradient torch.abs uses).
template <typename A> __device__ __forceinline__ A cvo_sign(A x) {
  return x > A(0) ? A(1) : (x < A(0) ? A(-1) : A(0));
}
// log(1 + exp(z)) without overflow.
template <typename A> __device__ __forceinline__ A cvo_softplus(A z) {
  return cvo_max(z, A(0)) + cvo_log1p(cvo_exp(-cvo_abs(z)));
}

// Gradient of min(a, b) / max(a, b) as torch.minimum / torch.maximum define it:
// the smaller (larger) input gets g, a tie splits g in halves.
template <typename A>
__device__ __forceinline__ void cvo_min_grad(A a, A b, A g, A* ga, A* gb) {
  if (a < b) { *ga += g; } else if (b < a) { *gb += g; } else { *ga += g / 2; *gb += g / 2; }
}
template <typename A>
__device__ __forceinline__ void cvo_max_grad(A a, A b, A g, A* ga, A* gb) {
  if (b < a) { *ga += g; } else if (a < b) { *gb += g; } else { *ga += g / 2; *gb += g / 2; }
}

// Flat grid-stride loop; i is a 64-bit index.
#define CVO_KERNEL_LOOP(i, n)                                                            \
  for (i64 i = (i64)blockIdx.x * (i64)blockDim.x + (i64)threadIdx.x; i < (i64)(n);       \
       i += (i64)blockDim.x * (i64)gridDim.x)
