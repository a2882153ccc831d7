// Greedy non-maximum suppression in two kernels over boxes already sorted by score
// (descending). Box i suppresses a later box j when IoU(i, j) > threshold (strictly), and,
// when idxs is not null, only if idxs[i] == idxs[j] (batched NMS by class).
//
// nms_mask: one thread per (row i, 64-column block): bit (j - 64 * block) of
//   mask[i * col_blocks + block] is set when i suppresses j (j > i).
// nms_reduce: one thread walks the rows in order, keeping a row unless an earlier kept row
//   suppresses it; removed (col_blocks words) must be zeroed by the caller.
#include "common.cuh"

template <typename A> __device__ __forceinline__ A nms_tiny();
template <> __device__ __forceinline__ float nms_tiny<float>() { return 1.17549435e-38f; }
template <> __device__ __forceinline__ double nms_tiny<double>() {
  return 2.2250738585072014e-308;
}

template <typename T>
__global__ void nms_mask(const T* __restrict__ boxes, const i64* __restrict__ idxs, i64 n,
                         i64 col_blocks, double threshold, double offset,
                         unsigned long long* __restrict__ mask) {
  typedef typename acc_type<T>::type A;
  const A off = A(offset);
  const A thr = A(threshold);
  CVO_KERNEL_LOOP(k, n * col_blocks) {
    const i64 i = k / col_blocks;
    const i64 block = k - i * col_blocks;
    const i64 j_begin = cvo_max(block * 64, i + 1);
    const i64 j_end = cvo_min(block * 64 + 64, n);
    const T* p = boxes + i * 4;
    const A ax1 = to_acc(p[0]), ay1 = to_acc(p[1]), ax2 = to_acc(p[2]), ay2 = to_acc(p[3]);
    const A area_a = cvo_max(ax2 - ax1 + off, A(0)) * cvo_max(ay2 - ay1 + off, A(0));
    unsigned long long bits = 0ULL;
    for (i64 j = j_begin; j < j_end; ++j) {
      if (idxs != nullptr && idxs[i] != idxs[j]) continue;
      const T* q = boxes + j * 4;
      const A bx1 = to_acc(q[0]), by1 = to_acc(q[1]), bx2 = to_acc(q[2]), by2 = to_acc(q[3]);
      const A area_b = cvo_max(bx2 - bx1 + off, A(0)) * cvo_max(by2 - by1 + off, A(0));
      const A iw = cvo_max(cvo_min(ax2, bx2) - cvo_max(ax1, bx1) + off, A(0));
      const A ih = cvo_max(cvo_min(ay2, by2) - cvo_max(ay1, by1) + off, A(0));
      const A inter = iw * ih;
      const A iou = inter / cvo_max(area_a + area_b - inter, nms_tiny<A>());
      if (iou > thr) bits |= 1ULL << (j - block * 64);
    }
    mask[k] = bits;
  }
}

__global__ void nms_reduce(const unsigned long long* __restrict__ mask, i64 n, i64 col_blocks,
                           unsigned long long* __restrict__ removed, bool* __restrict__ keep) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  for (i64 i = 0; i < n; ++i) {
    const i64 word = i / 64;
    if ((removed[word] >> (i - word * 64)) & 1ULL) {
      keep[i] = false;
      continue;
    }
    keep[i] = true;
    const unsigned long long* row = mask + i * col_blocks;
    for (i64 w = word; w < col_blocks; ++w) removed[w] |= row[w];
  }
}
