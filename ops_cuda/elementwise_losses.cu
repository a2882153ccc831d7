// Elementwise regression losses on d = input - target.
//
// Smooth L1 v2 (sigma is a tensor): with s = sigma^2,
//   0.5 * s * d^2       if |d| < 1/s
//   |d| - 0.5 / s       otherwise
// sigma is read at sigma[i * sigma_stride] (stride 0: one value for all, 1: same shape as d).
//
// Wing loss (Feng et al. 2018):  w * ln(1 + |d|/eps) if |d| < w, else |d| - C,
//   C = w - w * ln(1 + w/eps).
// Backward kernels take the upstream gradient, read at grad_out[i * grad_stride] (stride 0:
// one value broadcast, as after .sum() or .mean()), and write dL/dinput (dL/dtarget is its
// negation) and, for smooth L1, the per-element dL/dsigma when grad_sigma is not null.
#include "common.cuh"

template <typename T>
__global__ void smooth_l1_fwd(const T* __restrict__ input, const T* __restrict__ target,
                              const T* __restrict__ sigma, i64 sigma_stride, i64 n,
                              T* __restrict__ out) {
  typedef typename acc_type<T>::type A;
  CVO_KERNEL_LOOP(i, n) {
    const A d = to_acc(input[i]) - to_acc(target[i]);
    const A sg = to_acc(sigma[i * sigma_stride]);
    const A s = sg * sg;
    const A ad = cvo_abs(d);
    out[i] = from_acc<T>(ad < A(1) / s ? A(0.5) * s * d * d : ad - A(0.5) / s);
  }
}

template <typename T>
__global__ void smooth_l1_bwd(const T* __restrict__ input, const T* __restrict__ target,
                              const T* __restrict__ sigma, i64 sigma_stride, i64 n,
                              const T* __restrict__ grad_out, i64 grad_stride,
                              T* __restrict__ grad_input, T* __restrict__ grad_sigma) {
  typedef typename acc_type<T>::type A;
  CVO_KERNEL_LOOP(i, n) {
    const A d = to_acc(input[i]) - to_acc(target[i]);
    const A sg = to_acc(sigma[i * sigma_stride]);
    const A s = sg * sg;
    const A g = to_acc(grad_out[i * grad_stride]);
    const bool quad = cvo_abs(d) < A(1) / s;
    grad_input[i] = from_acc<T>(g * (quad ? s * d : cvo_sign(d)));
    if (grad_sigma != nullptr) {
      // d/dsigma: quadratic branch sigma * d^2, linear branch 1 / sigma^3
      grad_sigma[i] = from_acc<T>(g * (quad ? sg * d * d : A(1) / (s * sg)));
    }
  }
}

template <typename T>
__global__ void wing_fwd(const T* __restrict__ input, const T* __restrict__ target, i64 n,
                         double w, double eps, T* __restrict__ out) {
  typedef typename acc_type<T>::type A;
  const A wa = A(w), ea = A(eps);
  const A c = wa - wa * cvo_log1p(wa / ea);
  CVO_KERNEL_LOOP(i, n) {
    const A ad = cvo_abs(to_acc(input[i]) - to_acc(target[i]));
    out[i] = from_acc<T>(ad < wa ? wa * cvo_log1p(ad / ea) : ad - c);
  }
}

template <typename T>
__global__ void wing_bwd(const T* __restrict__ input, const T* __restrict__ target, i64 n,
                         double w, double eps, const T* __restrict__ grad_out,
                         i64 grad_stride, T* __restrict__ grad_input) {
  typedef typename acc_type<T>::type A;
  const A wa = A(w), ea = A(eps);
  CVO_KERNEL_LOOP(i, n) {
    const A d = to_acc(input[i]) - to_acc(target[i]);
    const A ad = cvo_abs(d);
    const A slope = ad < wa ? wa / (ea + ad) : A(1);
    grad_input[i] = from_acc<T>(to_acc(grad_out[i * grad_stride]) * slope * cvo_sign(d));
  }
}
