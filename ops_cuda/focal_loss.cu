// Sigmoid focal loss (Lin et al. 2017) over logits (n_rows, n_cls) with integer targets:
// target t in 1..n_cls marks column t-1 positive, 0 is background (all columns negative),
// ignore_index skips the row. alpha < 0 disables the alpha weighting (torchvision's rule).
//   positive column: -alpha     * (1-p)^gamma * log(p)
//   negative column: -(1-alpha) * p^gamma     * log(1-p),   p = sigmoid(x)
// Forward writes the (unnormalised) sum into *out_sum (double, zeroed by the caller).
// Backward writes grad = coef[0] * dloss/dx, where coef is the upstream gradient of the sum.
#include "common.cuh"

template <typename A>
__device__ __forceinline__ void focal_terms(A x, bool pos, A alpha, A gamma, A* loss, A* grad) {
  // p = sigmoid(x), q = 1 - p = sigmoid(-x); log p = -softplus(-x), log q = -softplus(x)
  const A p = A(1) / (A(1) + cvo_exp(-x));
  const A q = A(1) / (A(1) + cvo_exp(x));
  if (pos) {
    const A w = alpha >= A(0) ? alpha : A(1);
    const A sp = cvo_softplus(-x);
    const A qg = cvo_pow(q, gamma);
    *loss = w * qg * sp;
    *grad = w * qg * (-gamma * p * sp - q);
  } else {
    const A w = alpha >= A(0) ? A(1) - alpha : A(1);
    const A sp = cvo_softplus(x);
    const A pg = cvo_pow(p, gamma);
    *loss = w * pg * sp;
    *grad = w * pg * (p + gamma * q * sp);
  }
}

template <typename T>
__global__ void sigmoid_focal_fwd(const T* __restrict__ logits, const i64* __restrict__ targets,
                                  i64 n_rows, i64 n_cls, double alpha, double gamma,
                                  i64 ignore_index, double* __restrict__ out_sum) {
  typedef typename acc_type<T>::type A;
  A local = A(0);
  CVO_KERNEL_LOOP(i, n_rows * n_cls) {
    const i64 row = i / n_cls;
    const i64 col = i - row * n_cls;
    const i64 t = targets[row];
    if (t == ignore_index) continue;
    A loss, grad;
    focal_terms<A>(to_acc(logits[i]), t == col + 1, A(alpha), A(gamma), &loss, &grad);
    local += loss;
  }
  if (local != A(0)) atomicAdd(out_sum, (double)local);
}

template <typename T>
__global__ void sigmoid_focal_bwd(const T* __restrict__ logits, const i64* __restrict__ targets,
                                  i64 n_rows, i64 n_cls, double alpha, double gamma,
                                  i64 ignore_index, const double* __restrict__ coef,
                                  T* __restrict__ grad_logits) {
  typedef typename acc_type<T>::type A;
  const A c = A(coef[0]);
  CVO_KERNEL_LOOP(i, n_rows * n_cls) {
    const i64 row = i / n_cls;
    const i64 col = i - row * n_cls;
    const i64 t = targets[row];
    A g = A(0);
    if (t != ignore_index) {
      A loss;
      focal_terms<A>(to_acc(logits[i]), t == col + 1, A(alpha), A(gamma), &loss, &g);
    }
    grad_logits[i] = from_acc<T>(c * g);
  }
}
