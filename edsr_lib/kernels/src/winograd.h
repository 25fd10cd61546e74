// Winograd F(4x4, 3x3) and F(2x2, 3x3) convolutions, forward and backward, with the fused residual block and upsampler.
// Part of conv.cpp's single translation unit: include it only from there.
#ifndef EDSR_KERNELS_WINOGRAD_H
#define EDSR_KERNELS_WINOGRAD_H
#include "onednn_plans.h"
#include "avx512_transpose.h"

namespace {

//
// For stride-1, pad-1 3x3 convolutions (every EDSR body conv): each 4x4 block of outputs comes from a 6x6 input
// tile with 36 multiplications per channel pair instead of 144 (Lavin and Gray 2016); F(2x2, 3x3), each 2x2 block
// from a 4x4 tile, 16 instead of 36. The code below is written once for both (a template on the variant's
// transforms, F4x4 or F2x2, and its kTile and kAlpha = kTile + 2). Per call:
//   1. x (NCHW) is copied into a zero-bordered NHWC buffer with channels padded to a multiple of 16;
//   2. the filters are transformed, U[kAlpha^2][C][O] = G g G^T (under 1% of the work; kept while the weights are
//      unchanged, see CachedFilters);
//   3. for chunks of tiles: the input transform V[kAlpha^2][tiles][C] = B^T d B, one batched oneDNN matmul
//      M[kAlpha^2] = V[kAlpha^2] U[kAlpha^2], and the output transform A^T M A, written straight into y (NCHW)
//      with the bias and the ReLU or residual (y * scale + skip) applied on the way.
// Every transform runs 16 channels at a time in plain loops the compiler vectorises (-O3 -march=native).
// Backward data is the same convolution of dy with the filters flipped and transposed (O and C swapped); backward
// weights reads the same identity the other way (WinogradWeightGrad).

constexpr int kLanes = 16;
constexpr int64_t kChunkBytes = int64_t(2) << 20;  // one chunk's transformed tiles (V): about L2-sized
constexpr int64_t kSmallFilters = 128 * 128;       // C x O up to which each thread runs its own chunks
constexpr int64_t kSmallChunk = 64;                // tiles per chunk then (16 to 128: within 20%)

int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The batched GEMM M[b] = V[b] U[b] for b < kAlpha^2, as a oneDNN matmul primitive per shape.
struct Gemm {
  dnnl_primitive_t primitive = nullptr;
  dnnl_memory_t a = nullptr, b = nullptr, c = nullptr;
  ~Gemm() {
    for (auto m : {a, b, c})
      if (m) dnnl_memory_destroy(m);
    if (primitive) dnnl_primitive_destroy(primitive);
  }
};

Gemm *BuildGemm(int64_t batch, int64_t rows, int64_t inner, int64_t cols) {
  Runtime *rt = GetRuntime();
  if (!rt) return nullptr;
  dnnl_dims_t a_dims = {batch, rows, inner}, b_dims = {batch, inner, cols}, c_dims = {batch, rows, cols};
  dnnl_memory_desc_t a_md = nullptr, b_md = nullptr, c_md = nullptr;
  dnnl_primitive_desc_t pd = nullptr;
  auto free_descriptors = OnExit([&] {
    for (auto md : {a_md, b_md, c_md})
      if (md) dnnl_memory_desc_destroy(md);
    if (pd) dnnl_primitive_desc_destroy(pd);
  });
  CHECK(dnnl_memory_desc_create_with_tag(&a_md, 3, a_dims, dnnl_f32, dnnl_abc));
  CHECK(dnnl_memory_desc_create_with_tag(&b_md, 3, b_dims, dnnl_f32, dnnl_abc));
  CHECK(dnnl_memory_desc_create_with_tag(&c_md, 3, c_dims, dnnl_f32, dnnl_abc));
  CHECK(dnnl_matmul_primitive_desc_create(&pd, rt->engine, a_md, b_md, nullptr, c_md, nullptr));
  auto gemm = std::make_unique<Gemm>();
  CHECK(dnnl_primitive_create(&gemm->primitive, pd));
  CHECK(dnnl_memory_create(&gemm->a, a_md, rt->engine, DNNL_MEMORY_NONE));
  CHECK(dnnl_memory_create(&gemm->b, b_md, rt->engine, DNNL_MEMORY_NONE));
  CHECK(dnnl_memory_create(&gemm->c, c_md, rt->engine, DNNL_MEMORY_NONE));
  return gemm.release();
}

std::map<std::array<int64_t, 4>, std::unique_ptr<Gemm>> gemms;

Gemm *GetGemm(int64_t batch, int64_t rows, int64_t inner, int64_t cols) {
  std::array<int64_t, 4> key = {batch, rows, inner, cols};
  auto found = gemms.find(key);
  if (found != gemms.end()) return found->second.get();
  if (gemms.size() >= kMaxPlans) gemms.clear();
  Gemm *gemm = BuildGemm(batch, rows, inner, cols);
  if (!gemm) return nullptr;
  return gemms.emplace(key, std::unique_ptr<Gemm>(gemm)).first->second.get();
}

// Buffers of the Winograd path, reused from call to call (as `workspace`); trimmed when large.
std::array<Slot, 4> wino_workspace;  // padded input, U, V, M

void ParallelFor(int64_t count, const std::function<void(int64_t, int64_t)> &body) {
  SleepingPool *pool = GetRuntime()->pool.get();
  const int chunks = pool->get_num_threads();
  pool->parallel_for(chunks, [&](int chunk, int total) {
    const int64_t begin = count * chunk / total, end = count * (chunk + 1) / total;
    if (begin < end) body(begin, end);
  });
}

// The two Winograd variants' transforms along one axis, each for kLanes channels: `in + k * step` points at the
// k-th kLanes floats, `out + k * out_step` receives the k-th result.
//   Input:  B^T d (kAlpha values from kAlpha);  Output: A^T m (kTile from kAlpha);
//   Filter: G g (kAlpha from 3);  Grad: A dy (kAlpha from kTile, backward weights);  FilterBack: G^T m (3 from kAlpha).
// F(4x4, 3x3) (Lavin and Gray's points 0, +-1, +-2, infinity): 36 multiplications per 16 outputs instead of 144.
struct F4x4 {
  static constexpr int kAlpha = 6, kTile = 4;
  static void Input(const float *in, int64_t step, float *out, int64_t out_step) {
    const float *d0 = in, *d1 = in + step, *d2 = in + 2 * step, *d3 = in + 3 * step, *d4 = in + 4 * step,
                *d5 = in + 5 * step;
    for (int v = 0; v < kLanes; ++v) {
      out[v] = 4.f * d0[v] - 5.f * d2[v] + d4[v];
      out[out_step + v] = -4.f * (d1[v] + d2[v]) + d3[v] + d4[v];
      out[2 * out_step + v] = 4.f * (d1[v] - d2[v]) - d3[v] + d4[v];
      out[3 * out_step + v] = -2.f * (d1[v] - d3[v]) - d2[v] + d4[v];
      out[4 * out_step + v] = 2.f * (d1[v] - d3[v]) - d2[v] + d4[v];
      out[5 * out_step + v] = 4.f * d1[v] - 5.f * d3[v] + d5[v];
    }
  }
  static void Output(const float *in, int64_t step, float *out, int64_t out_step) {
    const float *m0 = in, *m1 = in + step, *m2 = in + 2 * step, *m3 = in + 3 * step, *m4 = in + 4 * step,
                *m5 = in + 5 * step;
    for (int v = 0; v < kLanes; ++v) {
      const float p12 = m1[v] + m2[v], n12 = m1[v] - m2[v], p34 = m3[v] + m4[v], n34 = m3[v] - m4[v];
      out[v] = m0[v] + p12 + p34;
      out[out_step + v] = n12 + 2.f * n34;
      out[2 * out_step + v] = p12 + 4.f * p34;
      out[3 * out_step + v] = n12 + 8.f * n34 + m5[v];
    }
  }
  static void Filter(const float *in, int64_t step, float *out, int64_t out_step) {
    const float *g0 = in, *g1 = in + step, *g2 = in + 2 * step;
    for (int v = 0; v < kLanes; ++v) {
      out[v] = g0[v] / 4.f;
      out[out_step + v] = -(g0[v] + g1[v] + g2[v]) / 6.f;
      out[2 * out_step + v] = -(g0[v] - g1[v] + g2[v]) / 6.f;
      out[3 * out_step + v] = g0[v] / 24.f + g1[v] / 12.f + g2[v] / 6.f;
      out[4 * out_step + v] = g0[v] / 24.f - g1[v] / 12.f + g2[v] / 6.f;
      out[5 * out_step + v] = g2[v];
    }
  }
  static void Grad(const float *in, int64_t step, float *out, int64_t out_step) {
    const float *d0 = in, *d1 = in + step, *d2 = in + 2 * step, *d3 = in + 3 * step;
    for (int v = 0; v < kLanes; ++v) {
      out[v] = d0[v];
      out[out_step + v] = d0[v] + d1[v] + d2[v] + d3[v];
      out[2 * out_step + v] = d0[v] - d1[v] + d2[v] - d3[v];
      out[3 * out_step + v] = d0[v] + 2.f * d1[v] + 4.f * d2[v] + 8.f * d3[v];
      out[4 * out_step + v] = d0[v] - 2.f * d1[v] + 4.f * d2[v] - 8.f * d3[v];
      out[5 * out_step + v] = d3[v];
    }
  }
  static void FilterBack(const float *m, float *out) {  // one channel pair: m[kAlpha] -> out[3]
    out[0] = m[0] / 4.f - (m[1] + m[2]) / 6.f + (m[3] + m[4]) / 24.f;
    out[1] = (m[2] - m[1]) / 6.f + (m[3] - m[4]) / 12.f;
    out[2] = (m[3] + m[4] - m[1] - m[2]) / 6.f + m[5];
  }
};

// F(2x2, 3x3) (points 0, +-1, infinity): 16 multiplications per 4 outputs instead of 36, with transforms of only
// +-1 and 1/2, so its float32 error is about half F(4x4)'s (2-3 times a direct convolution's; docs/benchmarks.md).
struct F2x2 {
  static constexpr int kAlpha = 4, kTile = 2;
  static void Input(const float *in, int64_t step, float *out, int64_t out_step) {
    const float *d0 = in, *d1 = in + step, *d2 = in + 2 * step, *d3 = in + 3 * step;
    for (int v = 0; v < kLanes; ++v) {
      out[v] = d0[v] - d2[v];
      out[out_step + v] = d1[v] + d2[v];
      out[2 * out_step + v] = d2[v] - d1[v];
      out[3 * out_step + v] = d1[v] - d3[v];
    }
  }
  static void Output(const float *in, int64_t step, float *out, int64_t out_step) {
    const float *m0 = in, *m1 = in + step, *m2 = in + 2 * step, *m3 = in + 3 * step;
    for (int v = 0; v < kLanes; ++v) {
      out[v] = m0[v] + m1[v] + m2[v];
      out[out_step + v] = m1[v] - m2[v] - m3[v];
    }
  }
  static void Filter(const float *in, int64_t step, float *out, int64_t out_step) {
    const float *g0 = in, *g1 = in + step, *g2 = in + 2 * step;
    for (int v = 0; v < kLanes; ++v) {
      out[v] = g0[v];
      out[out_step + v] = (g0[v] + g1[v] + g2[v]) / 2.f;
      out[2 * out_step + v] = (g0[v] - g1[v] + g2[v]) / 2.f;
      out[3 * out_step + v] = g2[v];
    }
  }
  static void Grad(const float *in, int64_t step, float *out, int64_t out_step) {
    const float *d0 = in, *d1 = in + step;
    for (int v = 0; v < kLanes; ++v) {
      out[v] = d0[v];
      out[out_step + v] = d0[v] + d1[v];
      out[2 * out_step + v] = d0[v] - d1[v];
      out[3 * out_step + v] = -d1[v];
    }
  }
  static void FilterBack(const float *m, float *out) {
    out[0] = m[0] + (m[1] + m[2]) / 2.f;
    out[1] = (m[1] - m[2]) / 2.f;
    out[2] = (m[1] + m[2]) / 2.f + m[3];
  }
};

// Transformed filters kept from call to call: inference runs the same weights through every call, so U is reused
// once the weights are found unchanged (compared in full, about 1% of the convolution); a training step changes
// them and U is recomputed. At most kFilterCacheBytes in all (baseline EDSR needs 22 MB; the paper model's
// 256-channel layers are 9.4 MB each, and the ones beyond the budget are transformed on every call).
constexpr size_t kFilterCacheBytes = size_t(96) << 20;
struct CachedFilters {
  std::vector<float> weights, u;
};
std::map<std::tuple<const float *, int64_t, int64_t, bool, int>, CachedFilters> filter_cache;  // ..., flip, alpha
size_t filter_cache_bytes = 0;


// The input side of a 3x3, pad-1 convolution computed in W::kTile-square output tiles: the geometry, packing rows
// of the NCHW input into zero-bordered NHWC with channels padded to a multiple of 16, and the input transform
// V = B^T d B.
template <class W>
struct Tiles {
  static constexpr int kAlpha = W::kAlpha, kTile = W::kTile;
  const float *x;
  int64_t n, c, h, wd, cp, th, tw, ph, pw;
  Tiles(const float *x_, int64_t n_, int64_t c_, int64_t h_, int64_t wd_)
      : x(x_), n(n_), c(c_), h(h_), wd(wd_), cp(RoundUp(c_, kLanes)), th((h_ + kTile - 1) / kTile),
        tw((wd_ + kTile - 1) / kTile), ph(th * kTile + 2), pw(tw * kTile + 2) {}

  // One padded row (padded row index `row` of image `img`: a zero border of 1, then whole tiles), through
  // 16 x 16 (channel x column) blocks so that reads and writes are runs of 16 floats.
  void PackRow(int64_t img, int64_t row, float *dst) const {
    const int64_t src_row = row - 1;
    if (src_row < 0 || src_row >= h) {
      std::fill(dst, dst + pw * cp, 0.f);
      return;
    }
    std::fill(dst, dst + cp, 0.f);                       // the left border column
    std::fill(dst + (wd + 1) * cp, dst + pw * cp, 0.f);  // right border and the last tile's padding
    for (int64_t ch0 = 0; ch0 < cp; ch0 += kLanes) {
      const int64_t channels = std::max<int64_t>(0, std::min<int64_t>(kLanes, c - ch0));
      for (int64_t col0 = 0; col0 < wd; col0 += kLanes) {
        const int64_t cols = std::min<int64_t>(kLanes, wd - col0);
#if defined(__AVX512F__)
        const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1);
        __m512 r[kLanes];
        for (int64_t l = 0; l < kLanes; ++l)
          r[l] = l < channels ? _mm512_maskz_loadu_ps(mask, x + ((img * c + ch0 + l) * h + src_row) * wd + col0)
                              : _mm512_setzero_ps();
        Transpose16(r);
        for (int64_t q = 0; q < cols; ++q) _mm512_storeu_ps(dst + (col0 + q + 1) * cp + ch0, r[q]);
#else
        float block[kLanes][kLanes];
        for (int64_t l = 0; l < kLanes; ++l) {
          if (l < channels) {
            const float *src = x + ((img * c + ch0 + l) * h + src_row) * wd + col0;
            for (int64_t q = 0; q < cols; ++q) block[q][l] = src[q];
          } else {
            for (int64_t q = 0; q < cols; ++q) block[q][l] = 0.f;
          }
        }
        for (int64_t q = 0; q < cols; ++q) std::copy(block[q], block[q] + kLanes, dst + (col0 + q + 1) * cp + ch0);
#endif
      }
    }
  }

  // Per-thread work in chunks of whole rows of tiles (about kSmallChunk tiles each): `chunks` of at most `most`
  // tiles, each needing `rows` packed input rows.
  struct RowChunks {
    int64_t group, groups, most, chunks, rows;
  };
  RowChunks Chunks() const {
    const int64_t group = std::min(th, std::max<int64_t>(1, kSmallChunk / tw)), groups = (th + group - 1) / group;
    return {group, groups, group * tw, n * groups, group * kTile + 2};
  }
  // Chunk `index`: packs its input rows into `packed` and transforms its tiles into `v`; returns (first tile,
  // tile count, image, first tile row).
  std::array<int64_t, 4> PackAndTransform(const RowChunks &chunks, int64_t index, float *packed, float *v) const {
    const int64_t img = index / chunks.groups, ty0 = index % chunks.groups * chunks.group;
    const int64_t ty1 = std::min(th, ty0 + chunks.group), first = (img * th + ty0) * tw, count = (ty1 - ty0) * tw;
    for (int64_t r = 0; r < (ty1 - ty0) * kTile + 2; ++r) PackRow(img, ty0 * kTile + r, packed + r * pw * cp);
    InputTransform(first, count, 0, count, v,
                   [&](int64_t) { return std::pair<const float *, int64_t>(packed, ty0 * kTile); });
    return {first, count, img, ty0};
  }

  // B^T d B of tiles first + [begin, end) into V rows [begin, end) of a chunk of `count` tiles. `rows_of(img)`: the
  // packed rows holding that image's tiles and the padded row index of their first row.
  template <class RowsOf>
  void InputTransform(int64_t first, int64_t count, int64_t begin, int64_t end, float *v, RowsOf rows_of) const {
    float rows[kAlpha][kAlpha][kLanes], cols[kAlpha][kLanes];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t tile = first + t, img = tile / (th * tw), ty = tile / tw % th, tx = tile % tw;
      const auto [packed, row0] = rows_of(img);
      const float *origin = packed + ((ty * kTile - row0) * pw + tx * kTile) * cp;
      for (int64_t ch = 0; ch < cp; ch += kLanes) {
        for (int j = 0; j < kAlpha; ++j) W::Input(origin + j * cp + ch, pw * cp, rows[j][0], kLanes);  // rows[j][i]
        for (int i = 0; i < kAlpha; ++i) {
          W::Input(&rows[0][i][0], kAlpha * kLanes, cols[0], kLanes);  // along the row: cols[j'] for row i
          for (int j = 0; j < kAlpha; ++j) {
            float *dst = v + ((i * kAlpha + j) * count + t) * cp + ch;
            for (int l = 0; l < kLanes; ++l) dst[l] = cols[j][l];
          }
        }
      }
    }
  }
};

enum Epilogue { kPlain = 0, kRelu = 1, kResidual = 2 };

// y[N,O,H,W] = conv3x3(x[N,C,H,W], filters) (+ bias, then the epilogue). `flip`: the filters are w[C][O] read
// flipped (backward data: x is dy, C and O are the forward's O and C). `shuffle` r > 1: y is written pixel-shuffled,
// [N, O / r^2, H r, W r], as the upsampler's PixelShuffle would rearrange it (no epilogue then).
template <class W>
int WinogradConv(const float *x, const float *w, const float *bias, float *y, int64_t n, int64_t c, int64_t h,
                 int64_t wd, int64_t o, bool flip, Epilogue epilogue, const float *skip, float scale,
                 int64_t shuffle = 0) {
  constexpr int kAlpha = W::kAlpha, kTile = W::kTile;
  if (n == 0 || h == 0 || wd == 0 || o == 0) return 0;  // an empty output: nothing to write (and no tiles to split)
  std::lock_guard<std::mutex> lock(pool_mutex);
  Runtime *rt = GetRuntime();
  if (!rt) return kPlanFailed;
  const Tiles<W> geo(x, n, c, h, wd);
  const int64_t cp = geo.cp, op = RoundUp(o, kLanes), th = geo.th, tw = geo.tw, tiles = n * th * tw;
  const int64_t ph = geo.ph, pw = geo.pw;  // padded input: a zero border of 1, then whole tiles
  // Tiles per chunk: about kChunkBytes of V, but at least 4 C O / (C + O), or re-reading U for every chunk would cost
  // more memory traffic than V and M themselves.
  const int64_t by_size = kChunkBytes / (kAlpha * kAlpha * 4 * std::max(cp, op));
  const int64_t chunk = std::min(tiles, std::max<int64_t>({16, by_size, 4 * cp * op / (cp + op)}));
  const int64_t xis = kAlpha * kAlpha;
  const size_t weight_count = size_t(o) * c * 9, u_count = size_t(xis) * cp * op;
  const auto key = std::make_tuple(w, c, o, flip, kAlpha);
  auto cached = filter_cache.find(key);
  const bool reuse = cached != filter_cache.end() && cached->second.weights.size() == weight_count &&
                     std::equal(w, w + weight_count, cached->second.weights.begin());
  if (!reuse && cached != filter_cache.end()) {  // the weights changed (training): transform them again in place
    std::copy(w, w + weight_count, cached->second.weights.begin());
  }
  const bool keep = cached == filter_cache.end() &&
                    filter_cache_bytes + sizeof(float) * (weight_count + u_count) <= kFilterCacheBytes;
  if (keep) {
    cached = filter_cache.emplace(key, CachedFilters{std::vector<float>(w, w + weight_count), std::vector<float>(u_count)}).first;
    filter_cache_bytes += sizeof(float) * (weight_count + u_count);
  }
  float *u = cached != filter_cache.end() ? cached->second.u.data()
                                         : static_cast<float *>(wino_workspace[1].Get(sizeof(float) * u_count));

  // 2. filters: U[xi][ch][oc], zero for padded channels, 16 output channels at a time (kAlpha^2 runs of 16 floats)
  if (!reuse) ParallelFor(cp, [&](int64_t begin, int64_t end) {
    float g[3][3][kLanes], t[kAlpha][3][kLanes], out[kAlpha][kAlpha][kLanes];
    for (int64_t ch = begin; ch < end; ++ch)
      for (int64_t oc0 = 0; oc0 < op; oc0 += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const int64_t oc = oc0 + l;
          for (int k = 0; k < 9; ++k) {
            // forward: w[oc][ch][i][j]; flipped: w[ch][oc][2-i][2-j] (the forward's filters, transposed)
            g[k / 3][k % 3][l] = oc >= o || ch >= c ? 0.f : flip ? w[(ch * o + oc) * 9 + 8 - k] : w[(oc * c + ch) * 9 + k];
          }
        }
        for (int j = 0; j < 3; ++j) W::Filter(&g[0][j][0], 3 * kLanes, &t[0][j][0], 3 * kLanes);  // G g
        for (int i = 0; i < kAlpha; ++i) W::Filter(&t[i][0][0], kLanes, out[i][0], kLanes);       // (G g) G^T
        for (int xi = 0; xi < xis; ++xi)
          std::copy(out[xi / kAlpha][xi % kAlpha], out[xi / kAlpha][xi % kAlpha] + kLanes, u + (xi * cp + ch) * op + oc0);
      }
  });
  // A^T M A of chunk row t (tile first + t) for output channels oc0..oc0+15, then bias and the epilogue, written
  // straight into y (NCHW).
  auto output_transform = [&](int64_t first, int64_t count, int64_t t, int64_t oc0, const float *m) {
    float rows[kAlpha][kTile][kLanes], cols[kTile][kLanes];
    const int64_t tile = first + t, img = tile / (th * tw), ty = tile / tw % th, tx = tile % tw;
    const int64_t height = std::min<int64_t>(kTile, h - ty * kTile);
    const int64_t width = std::min<int64_t>(kTile, wd - tx * kTile);
    for (int j = 0; j < kAlpha; ++j)  // rows[j][k] = (A^T M)[k][j]
      W::Output(m + (j * count + t) * op + oc0, kAlpha * count * op, rows[j][0], kLanes);
    const int64_t lanes = std::min<int64_t>(kLanes, o - oc0);
#if defined(__AVX512F__)
    if constexpr (kTile == 4) {
      if (shuffle <= 1 && height == 4 && width == 4) {
        // A whole 4x4 tile for 16 channels: its 16 pixel vectors transposed into one vector per channel, which
        // is then written as four rows of 4 floats, with the bias and the epilogue applied 16 pixels at a time.
        __m512 r[kLanes];
        for (int k = 0; k < kTile; ++k) {
          W::Output(&rows[0][k][0], kTile * kLanes, cols[0], kLanes);
          for (int q = 0; q < kTile; ++q) r[k * kTile + q] = _mm512_loadu_ps(cols[q]);
        }
        Transpose16(r);
        for (int64_t l = 0; l < lanes; ++l) {
          const int64_t oc = oc0 + l, at = ((img * o + oc) * h + ty * kTile) * wd + tx * kTile;
          __m512 value = _mm512_add_ps(r[l], _mm512_set1_ps(bias ? bias[oc] : 0.f));
          if (epilogue == kRelu) value = _mm512_max_ps(value, _mm512_setzero_ps());
          if (epilogue == kResidual) {
            __m512 near = _mm512_castps128_ps512(_mm_loadu_ps(skip + at));
            near = _mm512_insertf32x4(near, _mm_loadu_ps(skip + at + wd), 1);
            near = _mm512_insertf32x4(near, _mm_loadu_ps(skip + at + 2 * wd), 2);
            near = _mm512_insertf32x4(near, _mm_loadu_ps(skip + at + 3 * wd), 3);
            value = _mm512_fmadd_ps(value, _mm512_set1_ps(scale), near);
          }
          _mm_storeu_ps(y + at, _mm512_castps512_ps128(value));
          _mm_storeu_ps(y + at + wd, _mm512_extractf32x4_ps(value, 1));
          _mm_storeu_ps(y + at + 2 * wd, _mm512_extractf32x4_ps(value, 2));
          _mm_storeu_ps(y + at + 3 * wd, _mm512_extractf32x4_ps(value, 3));
        }
        return;
      }
    }
#endif
    for (int k = 0; k < height; ++k) {
      W::Output(&rows[0][k][0], kTile * kLanes, cols[0], kLanes);  // cols[q] = (A^T M A)[k][q]
      for (int64_t l = 0; l < lanes; ++l) {
        const int64_t oc = oc0 + l, row = ty * kTile + k, col = tx * kTile;
        const float b = bias ? bias[oc] : 0.f;
        if (shuffle > 1) {  // pixel shuffle: channel oc = c r^2 + dy r + dx goes to pixel (row r + dy, col r + dx) of c
          const int64_t r = shuffle, sub = oc % (r * r);
          float *dst = y + ((img * (o / (r * r)) + oc / (r * r)) * h * r + row * r + sub / r) * wd * r + col * r + sub % r;
          for (int q = 0; q < width; ++q) dst[q * r] = cols[q][l] + b;
          continue;
        }
        const int64_t at = ((img * o + oc) * h + row) * wd + col;
        for (int q = 0; q < width; ++q) {
          float value = cols[q][l] + b;
          if (epilogue == kRelu) value = value > 0.f ? value : 0.f;
          if (epilogue == kResidual) value = value * scale + skip[at + q];
          y[at + q] = value;
        }
      }
    }
  };
  if (cp * op <= kSmallFilters) {
    // 3a. Few channels: every thread runs its own chunks (whole rows of tiles, about kSmallChunk tiles) through
    // packing, the input transform, a single-threaded sgemm per xi and the output transform, so that the packed
    // rows, V, M and U stay in its core's cache.
    const int threads = rt->pool->get_num_threads();
    const typename Tiles<W>::RowChunks chunked = geo.Chunks();
    const int64_t most = chunked.most, chunks = chunked.chunks, rows = chunked.rows;
    float *v = static_cast<float *>(wino_workspace[2].Get(sizeof(float) * threads * xis * most * cp));
    float *m = static_cast<float *>(wino_workspace[3].Get(sizeof(float) * threads * xis * most * op));
    float *packed = static_cast<float *>(wino_workspace[0].Get(sizeof(float) * threads * rows * pw * cp));
    std::atomic<int> failed{0};
    rt->pool->parallel_for(threads, [&](int thread, int total) {
      float *tv = v + thread * xis * most * cp, *tm = m + thread * xis * most * op;
      float *tp = packed + thread * rows * pw * cp;
      for (int64_t index = chunks * thread / total; index < chunks * (thread + 1) / total; ++index) {
        const auto [first, count, img, ty0] = geo.PackAndTransform(chunked, index, tp, tv);
        for (int64_t xi = 0; xi < xis; ++xi) {
          if (dnnl_threadpool_interop_sgemm('N', 'N', count, op, cp, 1.f, tv + xi * count * cp, cp,
                                            u + xi * cp * op, op, 0.f, tm + xi * count * op, op,
                                            nullptr) != dnnl_success)
            failed = 1;
        }
        for (int64_t oc0 = 0; oc0 < o; oc0 += kLanes)
          for (int64_t t = 0; t < count; ++t) output_transform(first, count, t, oc0, tm);
      }
    });
    if (failed) return kExecuteFailed;
  } else {
    // 3b. Many channels: the whole input packed once, then large chunks of tiles, one batched matmul each on all
    // threads (U is too big to stay in a cache, so it should be read as few times as possible).
    float *padded = static_cast<float *>(wino_workspace[0].Get(sizeof(float) * n * ph * pw * cp));
    ParallelFor(n * ph, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) geo.PackRow(r / ph, r % ph, padded + r * pw * cp);
    });
    auto whole_image = [&](int64_t img) { return std::pair<const float *, int64_t>(padded + img * ph * pw * cp, 0); };
    float *v = static_cast<float *>(wino_workspace[2].Get(sizeof(float) * xis * chunk * cp));
    float *m = static_cast<float *>(wino_workspace[3].Get(sizeof(float) * xis * chunk * op));
    for (int64_t first = 0; first < tiles; first += chunk) {
      const int64_t count = std::min(chunk, tiles - first);
      ParallelFor(count, [&](int64_t begin, int64_t end) { geo.InputTransform(first, count, begin, end, v, whole_image); });
      Gemm *gemm = GetGemm(xis, count, cp, op);
      if (!gemm) return kPlanFailed;
      dnnl_memory_set_data_handle(gemm->a, v);
      dnnl_memory_set_data_handle(gemm->b, u);
      dnnl_memory_set_data_handle(gemm->c, m);
      dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, gemm->a}, {DNNL_ARG_WEIGHTS, gemm->b}, {DNNL_ARG_DST, gemm->c}};
      if (dnnl_primitive_execute(gemm->primitive, rt->stream, 3, args) != dnnl_success) return kExecuteFailed;
      if (dnnl_stream_wait(rt->stream) != dnnl_success) return kWaitFailed;
      // output channel blocks outermost: the 16 planes x 4 rows being written stay in L1 along a row of tiles
      const int64_t blocks = (o + kLanes - 1) / kLanes;
      ParallelFor(blocks * count, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item)
          output_transform(first, count, item % count, item / count * kLanes, m);
      });
    }
  }
  for (auto &slot : wino_workspace) slot.Trim();
  return kOk;
}

// Inputs as the direct entry points receive them; the epilogue's extra inputs for the residual form.
template <class W>
int WinogradForward(Epilogue epilogue, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  const int expected = epilogue == kResidual ? 6 : 4;
  if (nparam != expected || ndims[0] != 4 || ndims[1] != 4 || !IsFloat32(dtypes[0])) return kBadArguments;
  const int64_t *x = shapes[0], *w = shapes[1];
  if (w[2] != 3 || w[3] != 3) return kBadArguments;
  const float *skip = nullptr;
  float scale = 1.f;
  if (epilogue == kResidual) {
    const int64_t *s = shapes[3];
    if (ndims[3] != 4 || s[0] != x[0] || s[1] != w[0] || s[2] != x[2] || s[3] != x[3]) return kShapeMismatch;
    skip = static_cast<const float *>(params[3]);
    scale = *static_cast<const float *>(params[4]);
  }
  return WinogradConv<W>(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                      static_cast<const float *>(params[2]), static_cast<float *>(params[nparam - 1]), x[0], x[1],
                      x[2], x[3], w[0], false, epilogue, skip, scale);
}

// Weight gradient by Winograd (the same F(4x4, 3x3) identity read the other way): for every tile,
// dW += G^T [(A dy A^T) . (B^T x B)] G, where dy is the tile's 4x4 output gradient. The sum over tiles is taken in
// the transformed domain, one GEMM per xi: M[xi] (O x C) = sum_t D[xi][t]^T V[xi][t]; each thread accumulates its
// own chunks (as the forward's per-thread path), then the threads' sums are added and transformed back.
// db = the sum of dy. x[N,C,H,W], dy[N,O,H,W] -> dw[O,C,3,3], db[O].
template <class W>
int WinogradWeightGrad(const float *x, const float *dy, float *dw, float *db, int64_t n, int64_t c, int64_t h,
                       int64_t wd, int64_t o) {
  constexpr int kAlpha = W::kAlpha, kTile = W::kTile;
  if (n == 0 || h == 0 || wd == 0) {  // no pixels: zero gradients
    std::fill(dw, dw + o * c * 9, 0.f);
    if (db) std::fill(db, db + o, 0.f);
    return 0;
  }
  std::lock_guard<std::mutex> lock(pool_mutex);
  Runtime *rt = GetRuntime();
  if (!rt) return kPlanFailed;
  const Tiles<W> geo(x, n, c, h, wd);
  const int64_t cp = geo.cp, op = RoundUp(o, kLanes), tw = geo.tw, pw = geo.pw;
  const int64_t xis = kAlpha * kAlpha;
  const int threads = rt->pool->get_num_threads();
  const typename Tiles<W>::RowChunks chunked = geo.Chunks();
  const int64_t most = chunked.most, chunks = chunked.chunks, rows = chunked.rows;
  float *packed = static_cast<float *>(wino_workspace[0].Get(sizeof(float) * threads * rows * pw * cp));
  float *sums = static_cast<float *>(wino_workspace[1].Get(sizeof(float) * threads * xis * op * cp));
  float *v = static_cast<float *>(wino_workspace[2].Get(sizeof(float) * threads * xis * most * cp));
  float *d = static_cast<float *>(wino_workspace[3].Get(sizeof(float) * threads * xis * most * op));
  std::atomic<int> failed{0};
  rt->pool->parallel_for(threads, [&](int thread, int total) {
    float *tp = packed + thread * rows * pw * cp, *tv = v + thread * xis * most * cp;
    float *td = d + thread * xis * most * op, *acc = sums + thread * xis * op * cp;
    std::fill(acc, acc + xis * op * cp, 0.f);
    float tile[kTile][kTile][kLanes], rows4[kAlpha][kTile][kLanes], out[kAlpha][kLanes];
    for (int64_t index = chunks * thread / total; index < chunks * (thread + 1) / total; ++index) {
      const auto [first, count, img, ty0] = geo.PackAndTransform(chunked, index, tp, tv);
      for (int64_t t = 0; t < count; ++t) {  // D[xi][t][oc] = (A dy A^T) of the tile's 4x4 gradient
        const int64_t ty = ty0 + t / tw, tx = t % tw;
        for (int64_t oc0 = 0; oc0 < op; oc0 += kLanes) {
          for (int i = 0; i < kTile; ++i)
            for (int q = 0; q < kTile; ++q)
              for (int l = 0; l < kLanes; ++l) {
                const int64_t row = ty * kTile + i, col = tx * kTile + q, oc = oc0 + l;
                tile[i][q][l] = row < h && col < wd && oc < o ? dy[((img * o + oc) * h + row) * wd + col] : 0.f;
              }
          for (int q = 0; q < kTile; ++q)  // along the rows: rows4[xi_i][q] = (A d)[xi_i][q]
            W::Grad(&tile[0][q][0], kTile * kLanes, &rows4[0][q][0], kTile * kLanes);
          for (int i = 0; i < kAlpha; ++i) {  // then along the columns
            W::Grad(&rows4[i][0][0], kLanes, out[0], kLanes);
            for (int j = 0; j < kAlpha; ++j)
              std::copy(out[j], out[j] + kLanes, td + ((i * kAlpha + j) * count + t) * op + oc0);
          }
        }
      }
      for (int64_t xi = 0; xi < xis; ++xi) {  // acc[xi] (op x cp) += D[xi]^T (op x count) V[xi] (count x cp)
        if (dnnl_threadpool_interop_sgemm('T', 'N', op, cp, count, 1.f, td + xi * count * op, op,
                                          tv + xi * count * cp, cp, 1.f, acc + xi * op * cp, cp,
                                          nullptr) != dnnl_success)
          failed = 1;
      }
    }
  });
  if (failed) return kExecuteFailed;
  // the threads' sums, back from the transformed domain: dw = G^T M G; and db
  ParallelFor(o, [&](int64_t begin, int64_t end) {
    float m[kAlpha][kAlpha], half[3][kAlpha], column[kAlpha], back[3];
    for (int64_t oc = begin; oc < end; ++oc) {
      for (int64_t ch = 0; ch < c; ++ch) {
        for (int64_t xi = 0; xi < xis; ++xi) {
          float total = 0.f;
          for (int th_ = 0; th_ < threads; ++th_) total += sums[(th_ * xis + xi) * op * cp + oc * cp + ch];
          m[xi / kAlpha][xi % kAlpha] = total;
        }
        for (int j = 0; j < kAlpha; ++j) {  // G^T along the first axis
          for (int i = 0; i < kAlpha; ++i) column[i] = m[i][j];
          W::FilterBack(column, back);
          for (int k = 0; k < 3; ++k) half[k][j] = back[k];
        }
        float *dst = dw + (oc * c + ch) * 9;
        for (int k = 0; k < 3; ++k) W::FilterBack(half[k], dst + k * 3);  // and along the second
      }
      double bias_total = 0.0;
      for (int64_t img = 0; img < n; ++img) {
        const float *plane = dy + (img * o + oc) * h * wd;
        for (int64_t i = 0; i < h * wd; ++i) bias_total += plane[i];
      }
      db[oc] = static_cast<float>(bias_total);
    }
  });
  for (auto &slot : wino_workspace) slot.Trim();
  return kOk;
}

// Backward data: inputs dy, w; output dx.
template <class W>
int WinogradBackwardData(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || !IsFloat32(dtypes[0])) return kBadArguments;
  const int64_t *dy = shapes[0], *w = shapes[1];
  if (w[2] != 3 || w[3] != 3) return kBadArguments;
  return WinogradConv<W>(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]), nullptr,
                         static_cast<float *>(params[2]), dy[0], dy[1], dy[2], dy[3], w[1], true, kPlain, nullptr,
                         1.f);
}

// Backward weights: inputs x, dy and w (w only for its shape); outputs dw and db.
template <class W>
int WinogradBackwardWeights(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 5 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || !IsFloat32(dtypes[0])) return kBadArguments;
  const int64_t *x = shapes[0], *dy = shapes[1], *w = shapes[2];
  if (w[2] != 3 || w[3] != 3) return kBadArguments;
  return WinogradWeightGrad<W>(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                               static_cast<float *>(params[3]), static_cast<float *>(params[4]), x[0], x[1], x[2],
                               x[3], dy[1]);
}

// The upsampler's conv followed by its pixel shuffle, in one call: x, w, b -> y [N, O / r^2, H r, W r] with
// r = sqrt(O / C) (EDSR's upsampler convs have r^2 C outputs). The conv's output is never stored unshuffled.
int ShuffleFactor(const int64_t *x, const int64_t *w) {
  for (int64_t r = 2; r <= 4; ++r)
    if (w[0] == r * r * x[1]) return static_cast<int>(r);
  return 0;
}

template <class W>
int WinogradShuffleForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || !IsFloat32(dtypes[0])) return kBadArguments;
  const int64_t *x = shapes[0], *w = shapes[1];
  const int r = ShuffleFactor(x, w);
  if (w[2] != 3 || w[3] != 3 || r == 0) return kBadArguments;
  return WinogradConv<W>(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                         static_cast<const float *>(params[2]), static_cast<float *>(params[3]), x[0], x[1], x[2],
                         x[3], w[0], false, kPlain, nullptr, 1.f, r);
}

// A residual block for inference in one call: y = x + scale * conv2(relu(conv1(x))), the intermediate kept in
// the kit's own buffer, so MindSpore launches one op per block instead of two and keeps one tensor fewer alive.
// Inputs x, w1, b1, w2, b2, scale (one float); output y. Both convolutions use Winograd W, or direct for `void`.
Slot block_intermediate;
std::mutex block_mutex;  // one block at a time owns the intermediate (each convolution also takes pool_mutex)

template <class W>
int ResBlockForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  constexpr bool winograd = !std::is_void_v<W>;
  if (nparam != 7 || ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 4 || !IsFloat32(dtypes[0])) return kBadArguments;
  const int64_t *x = shapes[0], *w1 = shapes[1], *w2 = shapes[3];
  if (w1[0] != x[1] || w1[1] != x[1] || w2[0] != x[1] || w2[1] != x[1] || w1[2] != w2[2]) return kShapeMismatch;
  if (winograd && w1[2] != 3) return kBadArguments;
  const int64_t n = x[0], c = x[1], h = x[2], wd = x[3], count = n * c * h * wd;
  const float *in = static_cast<const float *>(params[0]);
  const float scale = *static_cast<const float *>(params[5]);
  float *out = static_cast<float *>(params[6]);
  std::lock_guard<std::mutex> lock(block_mutex);
  float *mid = static_cast<float *>(block_intermediate.Get(sizeof(float) * count));
  int status;
  if constexpr (winograd) {
    status = WinogradConv<W>(in, static_cast<const float *>(params[1]), static_cast<const float *>(params[2]), mid, n, c,
                          h, wd, c, false, kRelu, nullptr, 1.f);
    if (status == kOk)
      status = WinogradConv<W>(mid, static_cast<const float *>(params[3]), static_cast<const float *>(params[4]), out, n,
                            c, h, wd, c, false, kResidual, in, scale);
  } else {
    status = Run(kForwardRelu, {n, c, h, wd, c, w1[2]}, {params[0], params[1], params[2], mid});
    if (status == kOk) status = Run(kForward, {n, c, h, wd, c, w1[2]}, {mid, params[3], params[4], params[6]});
    if (status == kOk) ScaleAndAdd(out, in, scale, count);
  }
  block_intermediate.Trim();
  return status;
}

}  // namespace

#endif  // EDSR_KERNELS_WINOGRAD_H
