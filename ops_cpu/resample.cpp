// CPU kernels of WS-DAN's attention augmentation (ops_cpu/resample.py loads them).
//
// crop_resize: every image's (y0, x0, y1, x1) box (end-exclusive) resized to (Ho, Wo)
//   bilinearly with align_corners=True: output row i reads source row y0 + i (y1-1-y0)/(Ho-1),
//   as F.interpolate(img[..., y0:y1, x0:x1], (Ho, Wo), "bilinear", align_corners=True). The
//   resize is separable: each output row first blends its two source rows over the box's
//   columns (contiguous, vectorised), then reads two taps a column from that blended row.
// attention_drop: images * (upsampled map < thr), the map (h, w) upsampled to (H, W) the same
//   way (align_corners=True) row by row and never stored; one mask row serves every channel.
//
// Sampling positions and the maps' interpolation are computed in double; image values are
// blended in the element type T. Layouts: rows along W contiguous (NCHW-like, strides free
// otherwise) or channels innermost (NHWC: channel stride 1, column stride C). Output rows are
// split into contiguous ranges over `threads` std::threads (1: the caller's thread).
// crop_resize checks every box first and returns the first image whose box is outside its
// image or empty (nothing written), else -1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

struct Geometry {  // as packed by ops_cpu/resample.py: sizes, then element strides
  int64_t b, c, h, w, out_h, out_w;
  int64_t src[4], dst[4];
  int64_t nhwc;  // 1: channels innermost in both src and dst
};

template <typename F>
void parallel_rows(int64_t units, int64_t threads, F body) {
  threads = std::max<int64_t>(1, std::min(threads, units));
  if (threads == 1) {
    body(0, units);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  int64_t chunk = (units + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    int64_t lo = t * chunk, hi = std::min(units, lo + chunk);
    if (lo < hi) pool.emplace_back(body, lo, hi);
  }
  body(0, std::min(units, chunk));
  for (auto& th : pool) th.join();
}

// Source index (from the first point) and weight of output point i of an align_corners
// resize of `n_in` points to `n_out` points: it reads i (n_in - 1) / (n_out - 1).
struct Tap {
  int64_t lo;
  double frac;
};

inline Tap tap(int64_t i, int64_t n_in, int64_t n_out) {
  double pos = n_out > 1 ? double(i) * double(n_in - 1) / double(n_out - 1) : 0.0;
  int64_t lo = std::min<int64_t>(int64_t(std::floor(pos)), n_in - 1);
  return {lo, pos - double(lo)};
}

// The first image whose box is not 0 <= y0 < y1 <= h, 0 <= x0 < x1 <= w, or -1.
inline int64_t bad_box(const Geometry& g, const int64_t* boxes) {
  for (int64_t b = 0; b < g.b; ++b) {
    const int64_t* box = boxes + 4 * b;
    if (box[0] < 0 || box[1] < 0 || box[2] > g.h || box[3] > g.w || box[0] >= box[2] ||
        box[1] >= box[3])
      return b;
  }
  return -1;
}

template <typename T>
void crop_resize(const T* src, T* dst, const Geometry& g, const int64_t* boxes, int64_t threads) {
  const int64_t C = g.c, Wo = g.out_w, per_image = g.nhwc ? g.out_h : g.c * g.out_h;
  const int64_t lanes = g.nhwc ? C : 1;  // values per source column in a row
  parallel_rows(g.b * per_image, threads, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> col(Wo);
    std::vector<T> col_w(Wo), blend;
    int64_t table_of = -1;
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / per_image, r = u % per_image;
      const int64_t ch = g.nhwc ? 0 : r / g.out_h, i = g.nhwc ? r : r % g.out_h;
      const int64_t* box = boxes + 4 * b;
      const int64_t y0 = box[0], x0 = box[1], bh = box[2] - y0, bw = box[3] - x0;
      if (table_of != b) {  // this image's column taps, relative to the box's first column
        for (int64_t j = 0; j < Wo; ++j) {
          Tap t = tap(j, bw, Wo);
          col[j] = t.lo * lanes;
          col_w[j] = T(t.frac);
        }
        blend.resize((bw + 1) * lanes);
        table_of = b;
      }
      const Tap ty = tap(i, bh, g.out_h);
      const int64_t y_lo = y0 + ty.lo, y_hi = std::min(y_lo + 1, y0 + bh - 1);
      const T wy = T(ty.frac);
      const T* base = src + b * g.src[0] + ch * g.src[1] + x0 * g.src[3];
      const T* r0 = base + y_lo * g.src[2];
      const T* r1 = base + y_hi * g.src[2];
      const int64_t n = bw * lanes;
      T* tmp = blend.data();
      for (int64_t k = 0; k < n; ++k) tmp[k] = r0[k] + wy * (r1[k] - r0[k]);
      for (int64_t k = 0; k < lanes; ++k) tmp[n + k] = tmp[n - lanes + k];  // weight-0 tap
      T* out = dst + b * g.dst[0] + ch * g.dst[1] + i * g.dst[2];
      if (!g.nhwc) {
        for (int64_t j = 0; j < Wo; ++j) {
          const T a = tmp[col[j]], d = tmp[col[j] + 1];
          out[j] = a + col_w[j] * (d - a);
        }
      } else if (C == 3) {
        for (int64_t j = 0; j < Wo; ++j) {
          const T* a = tmp + col[j];
          const T w = col_w[j];
          out[3 * j] = a[0] + w * (a[3] - a[0]);
          out[3 * j + 1] = a[1] + w * (a[4] - a[1]);
          out[3 * j + 2] = a[2] + w * (a[5] - a[2]);
        }
      } else {
        for (int64_t j = 0; j < Wo; ++j) {
          const T* a = tmp + col[j];
          const T w = col_w[j];
          for (int64_t k = 0; k < C; ++k) out[C * j + k] = a[k] + w * (a[C + k] - a[k]);
        }
      }
    }
  });
}

template <typename T>
void attention_drop(const T* src, T* dst, const Geometry& g, const T* maps, int64_t map_h,
                    int64_t map_w, const double* thr, int64_t threads) {
  const int64_t C = g.c, W = g.w;
  parallel_rows(g.b * g.h, threads, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> col(W);
    std::vector<double> col_w(W), line(map_w + 1);
    std::vector<T> keep(W);
    for (int64_t j = 0; j < W; ++j) {
      Tap t = tap(j, map_w, W);
      col[j] = t.lo;
      col_w[j] = t.frac;
    }
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / g.h, i = u % g.h;
      const Tap ty = tap(i, map_h, g.h);
      const T* a0 = maps + (b * map_h + ty.lo) * map_w;
      const T* a1 = maps + (b * map_h + std::min(ty.lo + 1, map_h - 1)) * map_w;
      for (int64_t k = 0; k < map_w; ++k)
        line[k] = double(a0[k]) + ty.frac * (double(a1[k]) - double(a0[k]));
      line[map_w] = line[map_w - 1];
      const double t = thr[b];
      for (int64_t j = 0; j < W; ++j) {
        const double lo = line[col[j]], hi = line[col[j] + 1];
        keep[j] = lo + col_w[j] * (hi - lo) < t ? T(1) : T(0);
      }
      if (!g.nhwc) {
        for (int64_t ch = 0; ch < C; ++ch) {
          const T* in = src + b * g.src[0] + ch * g.src[1] + i * g.src[2];
          T* out = dst + b * g.dst[0] + ch * g.dst[1] + i * g.dst[2];
          for (int64_t j = 0; j < W; ++j) out[j] = in[j] * keep[j];
        }
      } else {
        const T* in = src + b * g.src[0] + i * g.src[2];
        T* out = dst + b * g.dst[0] + i * g.dst[2];
        if (C == 3) {
          for (int64_t j = 0; j < W; ++j) {
            const T k = keep[j];
            out[3 * j] = in[3 * j] * k;
            out[3 * j + 1] = in[3 * j + 1] * k;
            out[3 * j + 2] = in[3 * j + 2] * k;
          }
        } else {
          for (int64_t j = 0; j < W; ++j)
            for (int64_t k = 0; k < C; ++k) out[C * j + k] = in[C * j + k] * keep[j];
        }
      }
    }
  });
}

}  // namespace

#define CVO_CPU_ENTRIES(T, SUFFIX)                                                          \
  extern "C" int64_t cvo_crop_resize_##SUFFIX(const T* src, T* dst, const int64_t* geometry, \
                                              const int64_t* boxes, int64_t threads) {      \
    const Geometry& g = *reinterpret_cast<const Geometry*>(geometry);                       \
    const int64_t bad = bad_box(g, boxes);                                                  \
    if (bad < 0) crop_resize<T>(src, dst, g, boxes, threads);                               \
    return bad;                                                                             \
  }                                                                                         \
  extern "C" void cvo_attention_drop_##SUFFIX(const T* src, T* dst, const int64_t* geometry, \
                                              const T* maps, int64_t map_h, int64_t map_w,  \
                                              const double* thr, int64_t threads) {         \
    attention_drop<T>(src, dst, *reinterpret_cast<const Geometry*>(geometry), maps, map_h,  \
                      map_w, thr, threads);                                                 \
  }

CVO_CPU_ENTRIES(float, f32)
CVO_CPU_ENTRIES(double, f64)
