// Box overlaps in corner format (x1, y1, x2, y2); width = x2 - x1 + offset (offset 1 is the
// legacy VOC "+1" convention). Widths, heights, intersections clamp at 0; unions and enclosing
// areas divide after max(value, tiny) so degenerate boxes give 0 instead of NaN. The order of
// operations mirrors the torch reference in src/ops/boxes.py so float results agree exactly.
#include "common.cuh"

template <typename A> __device__ __forceinline__ A cvo_tiny();
template <> __device__ __forceinline__ float cvo_tiny<float>() { return 1.17549435e-38f; }
template <> __device__ __forceinline__ double cvo_tiny<double>() {
  return 2.2250738585072014e-308;
}

// IoU of the corner boxes p and q (4 values each), or their GIoU when giou is true, computed in
// the accumulation type A. Shared by the pairwise and the aligned kernels.
template <typename A, typename T>
__device__ __forceinline__ A cvo_box_overlap(const T* p, const T* q, A off, bool giou) {
  const A tiny = cvo_tiny<A>();
  const A ax1 = to_acc(p[0]), ay1 = to_acc(p[1]), ax2 = to_acc(p[2]), ay2 = to_acc(p[3]);
  const A bx1 = to_acc(q[0]), by1 = to_acc(q[1]), bx2 = to_acc(q[2]), by2 = to_acc(q[3]);
  const A area_a = cvo_max(ax2 - ax1 + off, A(0)) * cvo_max(ay2 - ay1 + off, A(0));
  const A area_b = cvo_max(bx2 - bx1 + off, A(0)) * cvo_max(by2 - by1 + off, A(0));
  const A iw = cvo_max(cvo_min(ax2, bx2) - cvo_max(ax1, bx1) + off, A(0));
  const A ih = cvo_max(cvo_min(ay2, by2) - cvo_max(ay1, by1) + off, A(0));
  const A inter = iw * ih;
  const A uni = area_a + area_b - inter;
  A v = inter / cvo_max(uni, tiny);
  if (giou) {
    const A cw = cvo_max(cvo_max(ax2, bx2) - cvo_min(ax1, bx1) + off, A(0));
    const A ch = cvo_max(cvo_max(ay2, by2) - cvo_min(ay1, by1) + off, A(0));
    const A area_c = cw * ch;
    v = v - (area_c - uni) / cvo_max(area_c, tiny);
  }
  return v;
}

// Pairwise IoU (giou == 0) or GIoU (giou != 0): boxes1 (batch, n, 4), boxes2 (batch, m, 4),
// out (batch, n, m).
template <typename T>
__global__ void box_iou_pairwise(const T* __restrict__ boxes1, const T* __restrict__ boxes2,
                                 i64 batch, i64 n, i64 m, double offset, int giou,
                                 T* __restrict__ out) {
  typedef typename acc_type<T>::type A;
  const A off = A(offset);
  CVO_KERNEL_LOOP(k, batch * n * m) {
    const i64 b = k / (n * m);
    const i64 r = k - b * n * m;
    const i64 i = r / m;
    const i64 j = r - i * m;
    out[k] = from_acc<T>(
        cvo_box_overlap<A>(boxes1 + (b * n + i) * 4, boxes2 + (b * m + j) * 4, off, giou != 0));
  }
}

// Aligned GIoU loss, 1 - GIoU(boxes1[k], boxes2[k]) for k < n; boxes (n, 4), out (n,).
template <typename T>
__global__ void giou_loss_fwd(const T* __restrict__ boxes1, const T* __restrict__ boxes2, i64 n,
                              double offset, T* __restrict__ out) {
  typedef typename acc_type<T>::type A;
  const A off = A(offset);
  CVO_KERNEL_LOOP(k, n) {
    out[k] = from_acc<T>(A(1) - cvo_box_overlap<A>(boxes1 + k * 4, boxes2 + k * 4, off, true));
  }
}

// Backward of giou_loss_fwd: grad_out read at k * grad_stride (0: one broadcast value),
// grad1/grad2 (n, 4). Sub-gradients follow torch:
// clamp(min=v) passes the gradient where its input is > v (torch), min/max split it on ties.
template <typename T>
__global__ void giou_loss_bwd(const T* __restrict__ boxes1, const T* __restrict__ boxes2, i64 n,
                              double offset, const T* __restrict__ grad_out, i64 grad_stride,
                              T* __restrict__ grad1, T* __restrict__ grad2) {
  typedef typename acc_type<T>::type A;
  const A off = A(offset);
  const A tiny = cvo_tiny<A>();
  CVO_KERNEL_LOOP(k, n) {
    const T* p = boxes1 + k * 4;
    const T* q = boxes2 + k * 4;
    const A ax1 = to_acc(p[0]), ay1 = to_acc(p[1]), ax2 = to_acc(p[2]), ay2 = to_acc(p[3]);
    const A bx1 = to_acc(q[0]), by1 = to_acc(q[1]), bx2 = to_acc(q[2]), by2 = to_acc(q[3]);
    // forward quantities
    const A wa_r = ax2 - ax1 + off, ha_r = ay2 - ay1 + off;
    const A wb_r = bx2 - bx1 + off, hb_r = by2 - by1 + off;
    const A wa = cvo_max(wa_r, A(0)), ha = cvo_max(ha_r, A(0));
    const A wb = cvo_max(wb_r, A(0)), hb = cvo_max(hb_r, A(0));
    const A ilx = cvo_max(ax1, bx1), ily = cvo_max(ay1, by1);
    const A irx = cvo_min(ax2, bx2), iry = cvo_min(ay2, by2);
    const A iw_r = irx - ilx + off, ih_r = iry - ily + off;
    const A iw = cvo_max(iw_r, A(0)), ih = cvo_max(ih_r, A(0));
    const A inter = iw * ih;
    const A uni = wa * ha + wb * hb - inter;
    const A uc = cvo_max(uni, tiny);
    const A clx = cvo_min(ax1, bx1), cly = cvo_min(ay1, by1);
    const A crx = cvo_max(ax2, bx2), cry = cvo_max(ay2, by2);
    const A cw_r = crx - clx + off, ch_r = cry - cly + off;
    const A cw = cvo_max(cw_r, A(0)), ch = cvo_max(ch_r, A(0));
    const A area_c = cw * ch;
    const A ac = cvo_max(area_c, tiny);
    // loss = 1 - giou, giou = inter / uc - (area_c - uni) / ac
    const A g = -to_acc(grad_out[k * grad_stride]);  // d loss / d giou = -1
    const A g_area_c = -g / ac + (area_c > tiny ? g * (area_c - uni) / (ac * ac) : A(0));
    const A g_uni = g / ac + (uni > tiny ? -g * inter / (uc * uc) : A(0));
    const A g_inter = g / uc - g_uni;
    A gax1 = 0, gay1 = 0, gax2 = 0, gay2 = 0, gbx1 = 0, gby1 = 0, gbx2 = 0, gby2 = 0;
    // areas of a and b (both receive g_uni)
    const A gwa = wa_r > A(0) ? g_uni * ha : A(0), gha = ha_r > A(0) ? g_uni * wa : A(0);
    const A gwb = wb_r > A(0) ? g_uni * hb : A(0), ghb = hb_r > A(0) ? g_uni * wb : A(0);
    gax2 += gwa; gax1 -= gwa; gay2 += gha; gay1 -= gha;
    gbx2 += gwb; gbx1 -= gwb; gby2 += ghb; gby1 -= ghb;
    // intersection
    const A giw = iw_r > A(0) ? g_inter * ih : A(0);
    const A gih = ih_r > A(0) ? g_inter * iw : A(0);
    cvo_min_grad(ax2, bx2, giw, &gax2, &gbx2);
    cvo_max_grad(ax1, bx1, -giw, &gax1, &gbx1);
    cvo_min_grad(ay2, by2, gih, &gay2, &gby2);
    cvo_max_grad(ay1, by1, -gih, &gay1, &gby1);
    // enclosing box
    const A gcw = cw_r > A(0) ? g_area_c * ch : A(0);
    const A gch = ch_r > A(0) ? g_area_c * cw : A(0);
    cvo_max_grad(ax2, bx2, gcw, &gax2, &gbx2);
    cvo_min_grad(ax1, bx1, -gcw, &gax1, &gbx1);
    cvo_max_grad(ay2, by2, gch, &gay2, &gby2);
    cvo_min_grad(ay1, by1, -gch, &gay1, &gby1);
    T* ga = grad1 + k * 4;
    T* gb = grad2 + k * 4;
    ga[0] = from_acc<T>(gax1); ga[1] = from_acc<T>(gay1);
    ga[2] = from_acc<T>(gax2); ga[3] = from_acc<T>(gay2);
    gb[0] = from_acc<T>(gbx1); gb[1] = from_acc<T>(gby1);
    gb[2] = from_acc<T>(gbx2); gb[3] = from_acc<T>(gby2);
  }
}
