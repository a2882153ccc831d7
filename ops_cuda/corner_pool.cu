// Corner pooling (CornerNet / CenterNet) on NCHW, one thread per scan line.
//   direction 0 top:    y[h] = max(x[h:, w])  (scan bottom -> top along H)
//   direction 1 bottom: y[h] = max(x[:h+1, w]) (scan top -> bottom)
//   direction 2 left:   y[w] = max(x[h, w:])  (scan right -> left along W)
//   direction 3 right:  y[w] = max(x[h, :w+1]) (scan left -> right)
// Backward sends grad_out[pos] to the arg-max of the scanned prefix. Tie rule:
//   tie 0 "nearest": an element equal to the running max takes it over, so the gradient goes
//                    to the tied element nearest to pos (torch.cummax's rule);
//   tie 1 "first":   only a strictly larger element takes over, so the gradient goes to the
//                    first tied element met in scan order (the CenterNet C++ extension's rule).
// grad_in must be zeroed by the caller. NaN inputs are not supported.
#include "common.cuh"

struct CvoLine {
  i64 start, step, len;  // scan order: offsets start, start + step, ... (len of them)
};

__device__ __forceinline__ CvoLine cvo_line(i64 l, i64 h, i64 w, int direction) {
  CvoLine line;
  i64 base, stride;
  if (direction < 2) {  // along H: lines are (plane, column)
    const i64 plane = l / w;
    base = plane * h * w + (l - plane * w);
    stride = w;
    line.len = h;
  } else {  // along W: lines are (plane, row)
    base = l * w;
    stride = 1;
    line.len = w;
  }
  const bool reverse = (direction == 0 || direction == 2);  // top / left scan backwards
  line.start = reverse ? base + (line.len - 1) * stride : base;
  line.step = reverse ? -stride : stride;
  return line;
}

template <typename T>
__global__ void corner_pool_fwd(const T* __restrict__ x, i64 planes, i64 h, i64 w, int direction,
                                T* __restrict__ y) {
  typedef typename acc_type<T>::type A;
  CVO_KERNEL_LOOP(l, planes * (direction < 2 ? w : h)) {
    const CvoLine line = cvo_line(l, h, w, direction);
    A best = A(0);
    T best_raw = x[0];
#pragma unroll 1
    for (i64 s = 0; s < line.len; ++s) {
      const i64 off = line.start + s * line.step;
      const A v = to_acc(x[off]);
      if (s == 0 || v > best) {
        best = v;
        best_raw = x[off];
      }
      y[off] = best_raw;
    }
  }
}

template <typename T>
__global__ void corner_pool_bwd(const T* __restrict__ x, const T* __restrict__ grad_out,
                                i64 planes, i64 h, i64 w, int direction, int tie,
                                T* __restrict__ grad_in) {
  typedef typename acc_type<T>::type A;
  CVO_KERNEL_LOOP(l, planes * (direction < 2 ? w : h)) {
    const CvoLine line = cvo_line(l, h, w, direction);
    A best = A(0);
    i64 arg = -1;
    A acc = A(0);  // gradient gathered by the current arg-max; each element is arg-max over
                   // one contiguous stretch of the scan, so it is written exactly once.
#pragma unroll 1
    for (i64 s = 0; s < line.len; ++s) {
      const i64 off = line.start + s * line.step;
      const A v = to_acc(x[off]);
      const bool take = (s == 0) || (tie == 0 ? v >= best : v > best);
      if (take) {
        if (arg >= 0 && arg != off) {
          grad_in[arg] = from_acc<T>(acc);
          acc = A(0);
        }
        best = v;
        arg = off;
      }
      acc += to_acc(grad_out[off]);
    }
    if (arg >= 0) grad_in[arg] = from_acc<T>(acc);
  }
}
