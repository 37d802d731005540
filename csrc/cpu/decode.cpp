// decode_block on the CPU: one pre-norm transformer block (RMSNorm, wqkv, RoPE, KV-cache write, attention over the
// written prefix, wo + residual, RMSNorm, w1 and w3, SwiGLU, w2 + residual) for the newest position of R rows, in
// one call instead of ~40 tensor ops. It is the body of a generation step (magvit2/nn/ar/generation.py). It reads
// the block's weights as the module holds them (nn.Linear's (out, in), the RMSNorm weights applied to the rows), so
// a generation needs no copy of the model.
//
// float32 runs its own loops. The matmuls have M = R rows (16 for 8 images with guidance) and weights that come
// from memory at every call (0.25-1.5 MB each at dim 256, 4-11 MB at dim 1024): dot-product register tiles over
// rows of x and rows of the weight, both read along `in` (see gemm). The attention reads the cache prefix once for
// the scores and once for the weighted sum; its exp is the float32 exp of sample_tokens. Every dtype but float32,
// and CPUs without AVX2 + FMA, run the ATen calls of magvit2/ops/reference/ar_decode.py instead, bit for bit the
// reference.
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() as a masked result's pass-through operand, which
// -W(maybe-)uninitialized reports once they are inlined (GCC bug 105593); the headers come in through ATen, so the pragma
// precedes every include.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/arch.h"
#include "common/checks.h"
#include "common/ops.h"

#if MAGVIT2_X86_KERNELS
#include <immintrin.h>
#endif

namespace magvit2 {
namespace {

// The float32 loops are x86-64 code (the AVX-512 and AVX2 + FMA tiles). Other architectures, and builds with
// MAGVIT2_NO_X86_KERNELS (csrc/common/arch.h), compile none of it and run the ATen calls below for every dtype, as
// an x86-64 CPU without AVX2 + FMA does.
#if MAGVIT2_X86_KERNELS
// Whether MAGVIT2_CPU_ISA (csrc/common/arch.h) lets decode use vector code of `level` (512: AVX-512, 2: AVX2 + FMA);
// unset allows all.
bool x86_allowed(int level) {
  const char* cap = std::getenv("MAGVIT2_CPU_ISA");
  const std::string v = cap == nullptr ? "avx512" : cap;
  TORCH_CHECK_VALUE(v == "avx512" || v == "avx2" || v == "base",
                    "MAGVIT2_CPU_ISA must be avx512, avx2 or base, got '", v, "'");
  return v == "avx512" || (v == "avx2" && level <= 2);
}

bool avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && x86_allowed(2);
  return ok;
}
bool avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && avx2_fma() && x86_allowed(512);
  return ok;
}

// The matmuls read the weights as nn.Linear stores them, (out, in) row-major: out[r, c] = res[r, c] + sum_p x[r, p]
// w[c, p], x (m, in). A register tile of ROWS x-rows by 4 weight rows keeps ROWS x 4 vector sums for the whole in
// loop (each weight row streamed once from memory, by the tile's first row block, then from L1 / L2) and reduces
// them across lanes at the end, 4 sums per row at once. Rows of x and w are read along in, so both are streamed in
// address order. `ahead`: the weight rows two tiles on, prefetched by the first row block.

// One row's COLS outputs from the lane sums y[c] (y[c] zero for c >= COLS): the 4 vectors reduced across lanes
// at once (a tree of hadds), the in-tail from p on added, then res.
template <int COLS>
__attribute__((target("avx2,fma"))) inline void finish(const __m256 y[4], const float* x, int64_t k, const float* w,
                                                       int64_t p, const float* res, float* out) {
  float s[4];
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(y[0], y[1]), _mm256_hadd_ps(y[2], y[3]));
  _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  for (int c = 0; c < COLS; ++c) {
    for (int64_t q = p; q < k; ++q) s[c] += x[q] * w[c * k + q];
    out[c] = (res ? res[c] : 0.0f) + s[c];
  }
}

// AVX-512: 16 floats a vector, tiles of up to 6 x 4 (24 sums in zmm registers).
template <int ROWS, int COLS>
__attribute__((target("avx512f,avx2,fma"))) inline void tile512(const float* x, int64_t k, const float* w,
                                                                const float* res, float* out, int64_t ldo,
                                                                const float* ahead) {
  __m512 acc[ROWS][COLS];
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < COLS; ++c) acc[r][c] = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + 16 <= k; p += 16) {
    __m512 wv[COLS];
#pragma GCC unroll 4
    for (int c = 0; c < COLS; ++c) wv[c] = _mm512_loadu_ps(w + c * k + p);
    if (ahead) {
#pragma GCC unroll 4
      for (int c = 0; c < COLS; ++c) _mm_prefetch(reinterpret_cast<const char*>(ahead + c * k + p), _MM_HINT_T0);
    }
#pragma GCC unroll 6
    for (int r = 0; r < ROWS; ++r) {
      const __m512 xv = _mm512_loadu_ps(x + r * k + p);
#pragma GCC unroll 4
      for (int c = 0; c < COLS; ++c) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) {
    __m256 y[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {  // 512 -> 256 bits: the upper half swapped down and added
      const __m512 v = acc[r][c < COLS ? c : 0];
      y[c] = c < COLS ? _mm512_castps512_ps256(_mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E))) : _mm256_setzero_ps();
    }
    finish<COLS>(y, x + r * k, k, w, p, res ? res + r * ldo : nullptr, out + r * ldo);
  }
}

// AVX2: 8 floats a vector, tiles of up to 2 x 4 (8 sums + 4 weight vectors + x in the 16 ymm registers).
template <int ROWS, int COLS>
__attribute__((target("avx2,fma"))) inline void tile256(const float* x, int64_t k, const float* w, const float* res,
                                                        float* out, int64_t ldo, const float* ahead) {
  __m256 acc[ROWS][COLS];
#pragma GCC unroll 2
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < COLS; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t p = 0;
  for (; p + 8 <= k; p += 8) {
    __m256 wv[COLS];
#pragma GCC unroll 4
    for (int c = 0; c < COLS; ++c) wv[c] = _mm256_loadu_ps(w + c * k + p);
    if (ahead && p % 16 == 0) {
#pragma GCC unroll 4
      for (int c = 0; c < COLS; ++c) _mm_prefetch(reinterpret_cast<const char*>(ahead + c * k + p), _MM_HINT_T0);
    }
#pragma GCC unroll 2
    for (int r = 0; r < ROWS; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * k + p);
#pragma GCC unroll 4
      for (int c = 0; c < COLS; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < ROWS; ++r) {
    __m256 y[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) y[c] = c < COLS ? acc[r][c < COLS ? c : 0] : _mm256_setzero_ps();
    finish<COLS>(y, x + r * k, k, w, p, res ? res + r * ldo : nullptr, out + r * ldo);
  }
}

// COLS weight rows for all m rows of x, in row blocks of up to 6 (AVX-512) or 2 (AVX2).
template <int COLS>
__attribute__((target("avx512f,avx2,fma"))) void rows512(const float* x, int64_t m, int64_t k, const float* w,
                                                         const float* res, float* out, int64_t ldo,
                                                         const float* ahead) {
  for (int64_t r = 0; r < m;) {
    const int64_t rows = std::min<int64_t>(m - r, 6);
    const float* xr = x + r * k;
    const float* rr = res ? res + r * ldo : nullptr;
    float* o = out + r * ldo;
    const float* pf = r == 0 ? ahead : nullptr;
    switch (rows) {
      case 6: tile512<6, COLS>(xr, k, w, rr, o, ldo, pf); break;
      case 5: tile512<5, COLS>(xr, k, w, rr, o, ldo, pf); break;
      case 4: tile512<4, COLS>(xr, k, w, rr, o, ldo, pf); break;
      case 3: tile512<3, COLS>(xr, k, w, rr, o, ldo, pf); break;
      case 2: tile512<2, COLS>(xr, k, w, rr, o, ldo, pf); break;
      default: tile512<1, COLS>(xr, k, w, rr, o, ldo, pf); break;
    }
    r += rows;
  }
}

template <int COLS>
__attribute__((target("avx2,fma"))) void rows256(const float* x, int64_t m, int64_t k, const float* w,
                                                 const float* res, float* out, int64_t ldo, const float* ahead) {
  for (int64_t r = 0; r < m;) {
    const int64_t rows = std::min<int64_t>(m - r, 2);
    const float* rr = res ? res + r * ldo : nullptr;
    const float* pf = r == 0 ? ahead : nullptr;
    if (rows == 2) {
      tile256<2, COLS>(x + r * k, k, w, rr, out + r * ldo, ldo, pf);
    } else {
      tile256<1, COLS>(x + r * k, k, w, rr, out + r * ldo, ldo, pf);
    }
    r += rows;
  }
}

template <bool WIDE, int COLS>
void rows_nt(const float* x, int64_t m, int64_t k, const float* w, const float* res, float* out, int64_t ldo,
             const float* ahead) {
  if constexpr (WIDE) {
    rows512<COLS>(x, m, k, w, res, out, ldo, ahead);
  } else {
    rows256<COLS>(x, m, k, w, res, out, ldo, ahead);
  }
}

// Columns [j0, j1) of out: 4 weight rows at a time, then the 1-3 left.
template <bool WIDE>
void gemm_columns(const float* x, int64_t m, int64_t k, const float* w, int64_t n, const float* res, float* out,
                  int64_t ldo, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    const float* ahead = j + 12 <= n ? w + (j + 8) * k : nullptr;
    rows_nt<WIDE, 4>(x, m, k, w + j * k, res ? res + j : nullptr, out + j, ldo, ahead);
  }
  const float* wj = w + j * k;
  const float* rj = res ? res + j : nullptr;
  switch (j1 - j) {
    case 3: rows_nt<WIDE, 3>(x, m, k, wj, rj, out + j, ldo, nullptr); break;
    case 2: rows_nt<WIDE, 2>(x, m, k, wj, rj, out + j, ldo, nullptr); break;
    case 1: rows_nt<WIDE, 1>(x, m, k, wj, rj, out + j, ldo, nullptr); break;
    default: break;
  }
}

// More than 8 rows on AVX-512: x transposed into blocks of 16 rows, xt (k, 16) each (zero padded), so that one zmm
// holds a column of x for 16 rows: out[:, c] of a block = sum_p w[c, p] * xt[p] for 8 weight rows c at a time
// (8 sums, each weight value broadcast from its row). No reduction across lanes; the weight rows stream in address
// order, 8 at a time (16 streams measured slower once the weights come from memory). Measured here, one thread,
// 16 rows: 65 us for a (768, 256) weight vs 88 for the dot-product tiles, 1.2 vs 1.9 ms for (3072, 1024).
template <int C>
__attribute__((target("avx512f,avx2,fma"))) void tile_t16(const float* xt, int64_t k, const float* w, int64_t rows,
                                                          const float* res, float* out, int64_t ldo,
                                                          const float* ahead) {
  __m512 acc[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < k; ++p) {
    const __m512 xv = _mm512_loadu_ps(xt + p * 16);
    if (ahead && (p & 15) == 0) {
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) _mm_prefetch(reinterpret_cast<const char*>(ahead + c * k + p), _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(w[c * k + p]), xv, acc[c]);
  }
  alignas(64) float sums[C][16];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) _mm512_store_ps(sums[c], acc[c]);
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < C; ++c) out[r * ldo + c] = (res ? res[r * ldo + c] : 0.0f) + sums[c][r];
  }
}

void gemm_transposed(const float* x, int64_t m, int64_t k, const float* w, int64_t n, const float* res, float* out,
                     int64_t ldo, int64_t grain) {
  const int64_t blocks = (m + 15) / 16;
  std::vector<float> xt(blocks * k * 16, 0.0f);
  for (int64_t r = 0; r < m; ++r) {
    float* dst = xt.data() + (r / 16) * k * 16 + r % 16;
    for (int64_t p = 0; p < k; ++p) dst[p * 16] = x[r * k + p];
  }
  at::parallel_for(0, (n + 7) / 8, grain, [&](int64_t begin, int64_t end) {
    const int64_t j1 = std::min(end * 8, n);
    int64_t j = begin * 8;
    for (; j + 8 <= j1; j += 8) {
      const float* ahead = j + 16 <= n ? w + (j + 8) * k : nullptr;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t off = b * 16 * ldo + j;
        tile_t16<8>(xt.data() + b * k * 16, k, w + j * k, std::min<int64_t>(16, m - b * 16), res ? res + off : nullptr,
                    out + off, ldo, b == 0 ? ahead : nullptr);
      }
    }
    if (j < j1) {  // the last 1-7 weight rows: dot-product tiles
      gemm_columns<true>(x, m, k, w, n, res, out, ldo, j, j1);
    }
  });
}

// out (m, ldo), columns [0, n) = res + x (m, k) @ w.T for w (n, k) as nn.Linear stores it; res (if any) has out's
// layout. Dot-product tiles (rows of x against rows of w) for up to 8 rows and on AVX2; x transposed into zmm
// columns for more rows on AVX-512 (gemm_transposed).
void gemm(const float* x, int64_t m, int64_t k, const at::Tensor& w, const float* res, float* out, int64_t ldo) {
  if (m == 0 || k == 0) {  // the grain below divides by m * k; the entry points return before zero rows get here
    return;
  }
  const int64_t n = w.size(0);
  const float* wp = w.const_data_ptr<float>();
  const bool wide = avx512();
  if (wide && m > 8) {
    gemm_transposed(x, m, k, wp, n, res, out, ldo, std::max<int64_t>(1, (int64_t(1) << 18) / (16 * m * k)));
    return;
  }
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / (8 * m * k));  // >= 256 kFLOP per task
  at::parallel_for(0, (n + 3) / 4, grain, [&](int64_t begin, int64_t end) {
    const int64_t j0 = begin * 4, j1 = std::min(end * 4, n);
    if (wide) {
      gemm_columns<true>(x, m, k, wp, n, res, out, ldo, j0, j1);
    } else {
      gemm_columns<false>(x, m, k, wp, n, res, out, ldo, j0, j1);
    }
  });
}

#endif  // MAGVIT2_X86_KERNELS

}  // namespace
}  // namespace magvit2

// The rest rounds as the reference's tensor ops: no contraction of multiplies and adds into FMAs, and the exp of
// common/exp.h (which needs these options: see there). The matmul tiles above stay outside these options, which cost
// them 10-15% (GCC's optimize pragma also resets some of the -O3 choices for the functions it covers).
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#if MAGVIT2_X86_KERNELS
#include "common/exp.h"
#endif

namespace magvit2 {
namespace {

#if MAGVIT2_X86_KERNELS
// RMSNorm of each row as RMSNorm.forward computes it in float32: (x * rsqrt(mean(x^2) + eps)) * g.
__attribute__((target_clones("avx2", "default"))) void rms_rows(const float* x, int64_t m, int64_t d, float eps,
                                                                 const float* g, float* out) {
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * d;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < d; ++i) s += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(s / static_cast<float>(d) + eps);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[r * d + i] = xr[i] * inv * g[i];
  }
}

// g = silu(a) * b for a, b (m, hidden): sigmoid from e = exp(-|a|) <= 1 (the exp's domain).
__attribute__((target_clones("avx2", "default"))) void swiglu(const float* a_all, const float* b_all, int64_t m,
                                                               int64_t hidden, float* g) {
  for (int64_t r = 0; r < m; ++r) {
    const float* a = a_all + r * hidden;
    const float* b = b_all + r * hidden;
    float* e = g + r * hidden;
#pragma omp simd
    for (int64_t i = 0; i < hidden; ++i) e[i] = -std::fabs(a[i]);
    exp_block(e, 0.0f, e, hidden);
#pragma omp simd
    for (int64_t i = 0; i < hidden; ++i) e[i] = (a[i] >= 0.0f ? 1.0f : e[i]) / (1.0f + e[i]) * a[i] * b[i];
  }
}

// One (row, head): rotate q and k by the RoPE row (cos, sin pairs), write k and v at position n of the caches
// (S, D), attend over positions [0, n]. scores: n + 1 floats.
__attribute__((target_clones("avx2", "default"))) void attend(const float* q, const float* k, const float* v,
                                                               const float* cs, float* kc, float* vc, int64_t n,
                                                               int64_t d, float* qr, float* scores, float* out) {
  for (int64_t i = 0; i < d / 2; ++i) {
    const float c = cs[2 * i], s = cs[2 * i + 1];
    qr[2 * i] = q[2 * i] * c - q[2 * i + 1] * s;
    qr[2 * i + 1] = q[2 * i + 1] * c + q[2 * i] * s;
    kc[n * d + 2 * i] = k[2 * i] * c - k[2 * i + 1] * s;
    kc[n * d + 2 * i + 1] = k[2 * i + 1] * c + k[2 * i] * s;
  }
  std::copy(v, v + d, vc + n * d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  float top = -INFINITY;
  for (int64_t j = 0; j <= n; ++j) {
    const float* kj = kc + j * d;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < d; ++i) s += qr[i] * kj[i];
    scores[j] = s * scale;
    top = std::max(top, scores[j]);
  }
  exp_block(scores, top, scores, n + 1);
  float total = 0.0f;
  std::fill(out, out + d, 0.0f);
  for (int64_t j = 0; j <= n; ++j) {
    const float p = scores[j];
    const float* vj = vc + j * d;
    total += p;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[i] += p * vj[i];
  }
  const float inv = 1.0f / total;
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) out[i] *= inv;
}

at::Tensor decode_float(const at::Tensor& x, const DecodeWeights& w, at::Tensor& k_cache, at::Tensor& v_cache,
                        const at::Tensor& rope, int64_t n, double eps) {
  const int64_t m = x.size(0), dim = x.size(1), heads = k_cache.size(1), length = k_cache.size(2);
  const int64_t d = k_cache.size(3), hidden = w.w1.size(0);
  const at::Tensor xc = x.contiguous(), wqkv = w.wqkv.contiguous(), wo = w.wo.contiguous();
  const at::Tensor w1 = w.w1.contiguous(), w3 = w.w3.contiguous(), w2 = w.w2.contiguous();
  const at::Tensor g1 = w.attention_norm.contiguous(), g2 = w.ffn_norm.contiguous();
  const at::Tensor row = rope.select(0, n).contiguous();
  at::Tensor out = at::empty({m, dim}, x.options());
  // scratch: normed rows, qkv, attention output, h, w1 and w3 outputs, SwiGLU
  at::Tensor scratch = at::empty({m * (dim + 3 * dim + dim + dim + 3 * hidden)}, x.options());
  float* xn = scratch.data_ptr<float>();
  float* qkv = xn + m * dim;
  float* att = qkv + m * 3 * dim;
  float* h = att + m * dim;
  float* a = h + m * dim;
  float* b = a + m * hidden;
  float* g = b + m * hidden;
  const float* xp = xc.const_data_ptr<float>();
  const float epsf = static_cast<float>(eps);

  rms_rows(xp, m, dim, epsf, g1.const_data_ptr<float>(), xn);
  gemm(xn, m, dim, wqkv, nullptr, qkv, 3 * dim);
  const float* cs = row.const_data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 4096 / ((n + 1) * d));
  at::parallel_for(0, m * heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(d + n + 1);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / heads, hd = t % heads;
      const float* q = qkv + r * 3 * dim + hd * d;
      attend(q, q + dim, q + 2 * dim, cs, kc + t * length * d, vc + t * length * d, n, d, buf.data(),
             buf.data() + d, att + r * dim + hd * d);
    }
  });
  gemm(att, m, dim, wo, xp, h, dim);
  rms_rows(h, m, dim, epsf, g2.const_data_ptr<float>(), xn);
  gemm(xn, m, dim, w1, nullptr, a, hidden);
  gemm(xn, m, dim, w3, nullptr, b, hidden);
  swiglu(a, b, m, hidden, g);
  gemm(g, m, hidden, w2, h, out.data_ptr<float>(), dim);
  return out;
}
#endif  // MAGVIT2_X86_KERNELS

// The reference's ATen calls (magvit2/ops/reference/ar_decode.py), for every other dtype.
at::Tensor rms_ref(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.square().mean({-1}, true) + eps)).to(x.scalar_type()) * weight;
}

at::Tensor rope_ref(const at::Tensor& x, const at::Tensor& row) {
  const at::Tensor pairs = x.to(at::kFloat).unflatten(-1, {-1, 2});
  const at::Tensor cos = row.select(1, 0), sin = row.select(1, 1);
  const at::Tensor a = pairs.select(-1, 0), b = pairs.select(-1, 1);
  return at::stack({a * cos - b * sin, b * cos + a * sin}, -1).flatten(-2).to(x.scalar_type());
}

at::Tensor decode_aten(const at::Tensor& x, const DecodeWeights& w, at::Tensor& k_cache, at::Tensor& v_cache,
                       const at::Tensor& rope, int64_t n, double eps) {
  const int64_t r = x.size(0), dim = x.size(1), heads = k_cache.size(1), d = k_cache.size(3);
  const at::Tensor qkv = at::linear(rms_ref(x, w.attention_norm, eps), w.wqkv).view({r, 3, heads, d});
  const at::Tensor qk = rope_ref(qkv.slice(1, 0, 2), rope.select(0, n));  // (R, 2, H, D)
  k_cache.select(2, n).copy_(qk.select(1, 1));
  v_cache.select(2, n).copy_(qkv.select(1, 2));
  const at::Tensor att = at::scaled_dot_product_attention(qk.select(1, 0).unsqueeze(2), k_cache.slice(2, 0, n + 1),
                                                          v_cache.slice(2, 0, n + 1));
  const at::Tensor h = x + at::linear(att.reshape({r, dim}), w.wo);
  const at::Tensor hn = rms_ref(h, w.ffn_norm, eps);
  return h + at::linear(at::silu(at::linear(hn, w.w1)) * at::linear(hn, w.w3), w.w2);
}

#if MAGVIT2_X86_KERNELS
at::Tensor logits_float(const at::Tensor& z, const at::Tensor& norm, const at::Tensor& head, double eps,
                        const std::optional<double>& cfg) {
  const int64_t rows = z.size(0), dim = z.size(1), vocab = head.size(0);
  const at::Tensor zc = z.contiguous(), gc = norm.contiguous(), hc = head.contiguous();
  at::Tensor zn = at::empty({rows, dim}, z.options());
  float* zp = zn.data_ptr<float>();
  rms_rows(zc.const_data_ptr<float>(), rows, dim, static_cast<float>(eps), gc.const_data_ptr<float>(), zp);
  int64_t m = rows;
  if (cfg.has_value()) {  // torch.lerp(uncond, cond, s): from the nearer end, as ATen's lerp
    m = rows / 2;
    const float s = static_cast<float>(*cfg);
    for (int64_t i = 0; i < m * dim; ++i) {
      const float c = zp[i], u = zp[m * dim + i];
      zp[i] = std::abs(s) < 0.5f ? u + s * (c - u) : c - (c - u) * (1.0f - s);
    }
  }
  at::Tensor out = at::empty({m, vocab}, z.options());
  gemm(zp, m, dim, hc, nullptr, out.data_ptr<float>(), vocab);
  return out;
}
#endif  // MAGVIT2_X86_KERNELS

at::Tensor logits_aten(const at::Tensor& z, const at::Tensor& norm, const at::Tensor& head, double eps,
                       const std::optional<double>& cfg) {
  at::Tensor zn = rms_ref(z, norm, eps);
  if (cfg.has_value()) {
    const std::vector<at::Tensor> halves = zn.chunk(2);
    zn = at::lerp(halves[1], halves[0], *cfg);
  }
  return at::linear(zn, head);
}

}  // namespace

at::Tensor decode_logits_cpu(const at::Tensor& z, const at::Tensor& norm, const at::Tensor& head, double eps,
                             std::optional<double> cfg_scale) {
  check_logits_args(z, norm, head, eps, cfg_scale);
  if (z.size(0) == 0) {  // zero rows (a generation of no images): empty logits, no kernel
    return at::empty({0, head.size(0)}, z.options());
  }
#if MAGVIT2_X86_KERNELS
  if (z.scalar_type() == at::kFloat && avx2_fma()) return logits_float(z, norm, head, eps, cfg_scale);
#endif
  return logits_aten(z, norm, head, eps, cfg_scale);
}

at::Tensor decode_block_cpu(const at::Tensor& x, const at::Tensor& attention_norm, const at::Tensor& wqkv,
                            const at::Tensor& wo, const at::Tensor& ffn_norm, const at::Tensor& w1,
                            const at::Tensor& w3, const at::Tensor& w2, at::Tensor& k_cache, at::Tensor& v_cache,
                            const at::Tensor& rope, const at::Tensor& pos, double eps) {
  const DecodeWeights w{attention_norm, wqkv, wo, ffn_norm, w1, w3, w2};
  const int64_t n = check_decode_args(x, w, k_cache, v_cache, rope, pos, eps);
  if (x.size(0) == 0) {  // zero rows: nothing to write into the (0, H, S, D) caches
    return at::empty_like(x, at::MemoryFormat::Contiguous);
  }
#if MAGVIT2_X86_KERNELS
  if (x.scalar_type() == at::kFloat && avx2_fma()) return decode_float(x, w, k_cache, v_cache, rope, n, eps);
#endif
  return decode_aten(x, w, k_cache, v_cache, rope, n, eps);
}

TORCH_LIBRARY_IMPL(magvit2, CPU, m) {
  m.impl("decode_block", &decode_block_cpu);
  m.impl("decode_logits", &decode_logits_cpu);
}

}  // namespace magvit2

#pragma GCC pop_options
