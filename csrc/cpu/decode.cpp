// decode_block on the CPU: one pre-norm transformer block (RMSNorm, wqkv, RoPE, KV-cache write, attention over the
// written prefix, wo + residual, RMSNorm, [w1 | w3], SwiGLU, w2 + residual) for the newest position of R rows, in
// one call instead of ~40 tensor ops. It is the body of a generation step (magvit2/nn/ar/generation.py).
//
// float32 runs its own loops. The four matmuls have M = R rows (16 for 8 images with guidance) and weights of
// 0.25-1.5 MB that come from memory at every call: a register tile of 6 (or 4) rows x 16 columns keeps its sums in
// 12 ymm registers for the whole K loop, streams the weight's 16-column panel once per row block (the first from
// memory, the others from L1/L2) and broadcasts x. Measured on the 2-core AMD EPYC (Zen 1, one thread, a decode
// step's 26 matmuls of dim 256): 9.7 ms per step with MKL sgemm on (in, out) weights, 11.2 ms through F.linear.
// The attention reads the cache prefix once for the scores and once for the weighted sum; its exp is the float32
// exp of sample_tokens. Every dtype but float32, and CPUs without AVX2 + FMA, run the ATen calls of
// magvit2/ops/reference/ar_decode.py instead, bit for bit the reference.
#pragma GCC optimize("fp-contract=off", "no-trapping-math")

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/arch.h"
#include "common/checks.h"
#include "common/ops.h"

#if MAGVIT2_X86_KERNELS
#include <immintrin.h>

#include "common/exp.h"
#endif

namespace magvit2 {
namespace {

// The float32 loops are x86-64 code (the AVX2 + FMA tile). Other architectures, and builds with
// MAGVIT2_NO_X86_KERNELS (csrc/common/arch.h), compile none of it and run the ATen calls below for every dtype, as
// an x86-64 CPU without AVX2 + FMA does.
#if MAGVIT2_X86_KERNELS
bool avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// out[r, j] = res[r, j] (0 without res) + sum_p x[r, p] w[p, j] for r < ROWS, j < 8 VECS.
template <int ROWS, int VECS>
__attribute__((target("avx2,fma"))) inline void tile(const float* x, int64_t k, const float* w, int64_t ldw,
                                                      const float* res, float* out, int64_t ldo, const float* ahead) {
  __m256 acc[ROWS][VECS];
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < VECS; ++v) acc[r][v] = res ? _mm256_loadu_ps(res + r * ldo + 8 * v) : _mm256_setzero_ps();
  for (int64_t p = 0; p < k; ++p) {
    if (ahead) _mm_prefetch(reinterpret_cast<const char*>(ahead + p * ldw), _MM_HINT_T0);
    __m256 wv[VECS];
#pragma GCC unroll 2
    for (int v = 0; v < VECS; ++v) wv[v] = _mm256_loadu_ps(w + p * ldw + 8 * v);
#pragma GCC unroll 6
    for (int r = 0; r < ROWS; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + r * k + p);
#pragma GCC unroll 2
      for (int v = 0; v < VECS; ++v) acc[r][v] = _mm256_fmadd_ps(xb, wv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < VECS; ++v) _mm256_storeu_ps(out + r * ldo + 8 * v, acc[r][v]);
}

// One 8 VECS-column panel for all m rows: blocks of 6 rows (4 + 4 for 8: 8 sums each, enough to hide the FMA
// latency), the panel re-read from cache by every block after the first. The first block also prefetches the rows
// of the panel at `ahead`.
template <int VECS>
__attribute__((target("avx2,fma"))) void panel(const float* x, int64_t m, int64_t k, const float* w, int64_t ldw,
                                                const float* res, float* out, int64_t ldo, const float* ahead) {
  for (int64_t r = 0; r < m;) {
    const int64_t rows = m - r == 8 ? 4 : std::min<int64_t>(m - r, 6);
    const float* xr = x + r * k;
    const float* rr = res ? res + r * ldo : nullptr;
    float* o = out + r * ldo;
    const float* pf = r == 0 ? ahead : nullptr;
    switch (rows) {
      case 6: tile<6, VECS>(xr, k, w, ldw, rr, o, ldo, pf); break;
      case 5: tile<5, VECS>(xr, k, w, ldw, rr, o, ldo, pf); break;
      case 4: tile<4, VECS>(xr, k, w, ldw, rr, o, ldo, pf); break;
      case 3: tile<3, VECS>(xr, k, w, ldw, rr, o, ldo, pf); break;
      case 2: tile<2, VECS>(xr, k, w, ldw, rr, o, ldo, pf); break;
      default: tile<1, VECS>(xr, k, w, ldw, rr, o, ldo, pf); break;
    }
    r += rows;
  }
}

// Columns [j0, j1) of out (m, n) = res + x (m, k) @ w, all row-major contiguous; w is (k, n), or with `panels` its
// 16-column panels (n / 16, k, 16), each contiguous. Each 16-column panel prefetches the one two panels on (in the
// (k, n) layout 2 panels ahead measured 5.8-6.3 ms per step's 24 block matmuls, 1 ahead 6.9-7.0).
__attribute__((target("avx2,fma"))) void gemm_columns(const float* x, int64_t m, int64_t k, const float* w, int64_t n,
                                                       bool panels, const float* res, float* out, int64_t j0,
                                                       int64_t j1) {
  const int64_t stride = panels ? 16 * k : 16;  // from one 16-column panel to the next
  int64_t j = j0;
  for (; j + 16 <= j1; j += 16) {
    const float* wj = panels ? w + j * k : w + j;
    panel<2>(x, m, k, wj, panels ? 16 : n, res ? res + j : nullptr, out + j, n, wj + 2 * stride);
  }
  for (; j + 8 <= j1; j += 8) panel<1>(x, m, k, w + j, n, res ? res + j : nullptr, out + j, n, nullptr);  // (k, n)
  for (; j < j1; ++j) {
    for (int64_t r = 0; r < m; ++r) {
      float s = res ? res[r * n + j] : 0.0f;
      for (int64_t p = 0; p < k; ++p) s += x[r * k + p] * w[p * n + j];
      out[r * n + j] = s;
    }
  }
}

// out = res + x @ w for a weight given as (in, out) or as its panels (out / 16, in, 16).
void gemm(const float* x, int64_t m, int64_t k, const at::Tensor& w, const float* res, float* out) {
  if (m == 0 || k == 0) {  // the grain below divides by m * k; the entry points return before zero rows get here
    return;
  }
  const bool panels = w.dim() == 3;
  const int64_t n = decode_out(w);
  const float* wp = w.const_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / (32 * m * k));  // >= 256 kFLOP per task
  at::parallel_for(0, (n + 15) / 16, grain, [&](int64_t begin, int64_t end) {
    gemm_columns(x, m, k, wp, n, panels, res, out, begin * 16, std::min(end * 16, n));
  });
}

// RMSNorm of each row (the weight is folded into the next matmul): x * rsqrt(mean(x^2) + eps).
__attribute__((target_clones("avx2", "default"))) void rms_rows(const float* x, int64_t m, int64_t d, float eps,
                                                                 float* out) {
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * d;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < d; ++i) s += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(s / static_cast<float>(d) + eps);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[r * d + i] = xr[i] * inv;
  }
}

// g = silu(a) * b for u = [a | b] (m, 2 hidden): sigmoid from e = exp(-|a|) <= 1 (the exp's domain).
__attribute__((target_clones("avx2", "default"))) void swiglu(const float* u, int64_t m, int64_t hidden, float* g) {
  for (int64_t r = 0; r < m; ++r) {
    const float* a = u + r * 2 * hidden;
    const float* b = a + hidden;
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

at::Tensor decode_float(const at::Tensor& x, const at::Tensor& wqkv, const at::Tensor& wo, const at::Tensor& w13,
                        const at::Tensor& w2, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& rope,
                        int64_t n, double eps) {
  const int64_t m = x.size(0), dim = x.size(1), heads = k_cache.size(1), length = k_cache.size(2);
  const int64_t d = k_cache.size(3), hidden = decode_in(w2);
  const at::Tensor xc = x.contiguous(), wqkv_c = wqkv.contiguous(), wo_c = wo.contiguous();
  const at::Tensor w13_c = w13.contiguous(), w2_c = w2.contiguous();
  const at::Tensor row = rope.select(0, n).contiguous();
  at::Tensor out = at::empty({m, dim}, x.options());
  // scratch: normed rows, qkv, attention output, h, [w1 | w3] output, SwiGLU
  at::Tensor scratch = at::empty({m * (dim + 3 * dim + dim + dim + 2 * hidden + hidden)}, x.options());
  float* xn = scratch.data_ptr<float>();
  float* qkv = xn + m * dim;
  float* att = qkv + m * 3 * dim;
  float* h = att + m * dim;
  float* u = h + m * dim;
  float* g = u + m * 2 * hidden;
  const float* xp = xc.const_data_ptr<float>();
  const float epsf = static_cast<float>(eps);

  rms_rows(xp, m, dim, epsf, xn);
  gemm(xn, m, dim, wqkv_c, nullptr, qkv);
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
  gemm(att, m, dim, wo_c, xp, h);
  rms_rows(h, m, dim, epsf, xn);
  gemm(xn, m, dim, w13_c, nullptr, u);
  swiglu(u, m, hidden, g);
  gemm(g, m, hidden, w2_c, h, out.data_ptr<float>());
  return out;
}
#endif  // MAGVIT2_X86_KERNELS

// The reference's ATen calls (magvit2/ops/reference/ar_decode.py), for every other dtype.
at::Tensor rms_ref(const at::Tensor& x, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.square().mean({-1}, true) + eps)).to(x.scalar_type());
}

at::Tensor rope_ref(const at::Tensor& x, const at::Tensor& row) {
  const at::Tensor pairs = x.to(at::kFloat).unflatten(-1, {-1, 2});
  const at::Tensor cos = row.select(1, 0), sin = row.select(1, 1);
  const at::Tensor a = pairs.select(-1, 0), b = pairs.select(-1, 1);
  return at::stack({a * cos - b * sin, b * cos + a * sin}, -1).flatten(-2).to(x.scalar_type());
}

// A weight as (in, out): panels (out / 16, in, 16) put back side by side.
at::Tensor dense(const at::Tensor& w) { return w.dim() == 3 ? w.permute({1, 0, 2}).reshape({w.size(1), -1}) : w; }

at::Tensor decode_aten(const at::Tensor& x, const at::Tensor& wqkv_in, const at::Tensor& wo_in,
                       const at::Tensor& w13_in, const at::Tensor& w2_in, at::Tensor& k_cache, at::Tensor& v_cache,
                       const at::Tensor& rope, int64_t n, double eps) {
  const at::Tensor wqkv = dense(wqkv_in), wo = dense(wo_in), w13 = dense(w13_in), w2 = dense(w2_in);
  const int64_t r = x.size(0), dim = x.size(1), heads = k_cache.size(1), d = k_cache.size(3);
  const at::Tensor qkv = at::matmul(rms_ref(x, eps), wqkv).view({r, 3, heads, d});
  const at::Tensor qk = rope_ref(qkv.slice(1, 0, 2), rope.select(0, n));  // (R, 2, H, D)
  k_cache.select(2, n).copy_(qk.select(1, 1));
  v_cache.select(2, n).copy_(qkv.select(1, 2));
  const at::Tensor att = at::scaled_dot_product_attention(qk.select(1, 0).unsqueeze(2), k_cache.slice(2, 0, n + 1),
                                                          v_cache.slice(2, 0, n + 1));
  const at::Tensor h = at::addmm(x, att.reshape({r, dim}), wo);
  const std::vector<at::Tensor> ab = at::matmul(rms_ref(h, eps), w13).chunk(2, -1);
  return at::addmm(h, at::silu(ab[0]) * ab[1], w2);
}

#if MAGVIT2_X86_KERNELS
at::Tensor logits_float(const at::Tensor& z, const at::Tensor& head, double eps, const std::optional<double>& cfg) {
  const int64_t rows = z.size(0), dim = z.size(1), vocab = decode_out(head);
  const at::Tensor zc = z.contiguous(), hc = head.contiguous();
  at::Tensor zn = at::empty({rows, dim}, z.options());
  float* zp = zn.data_ptr<float>();
  rms_rows(zc.const_data_ptr<float>(), rows, dim, static_cast<float>(eps), zp);
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
  gemm(zp, m, dim, hc, nullptr, out.data_ptr<float>());
  return out;
}
#endif  // MAGVIT2_X86_KERNELS

at::Tensor logits_aten(const at::Tensor& z, const at::Tensor& head, double eps, const std::optional<double>& cfg) {
  at::Tensor zn = rms_ref(z, eps);
  if (cfg.has_value()) {
    const std::vector<at::Tensor> halves = zn.chunk(2);
    zn = at::lerp(halves[1], halves[0], *cfg);
  }
  return at::matmul(zn, dense(head));
}

}  // namespace

at::Tensor decode_logits_cpu(const at::Tensor& z, const at::Tensor& head, double eps,
                             std::optional<double> cfg_scale) {
  check_logits_args(z, head, eps, cfg_scale);
  if (z.size(0) == 0) {  // zero rows (a generation of no images): empty logits, no kernel
    return at::empty({0, decode_out(head)}, z.options());
  }
#if MAGVIT2_X86_KERNELS
  if (z.scalar_type() == at::kFloat && avx2_fma()) return logits_float(z, head, eps, cfg_scale);
#endif
  return logits_aten(z, head, eps, cfg_scale);
}

at::Tensor decode_block_cpu(const at::Tensor& x, const at::Tensor& wqkv, const at::Tensor& wo, const at::Tensor& w13,
                            const at::Tensor& w2, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& rope,
                            const at::Tensor& pos, double eps) {
  const int64_t n = check_decode_args(x, wqkv, wo, w13, w2, k_cache, v_cache, rope, pos, eps);
  if (x.size(0) == 0) {  // zero rows: nothing to write into the (0, H, S, D) caches
    return at::empty_like(x, at::MemoryFormat::Contiguous);
  }
#if MAGVIT2_X86_KERNELS
  if (x.scalar_type() == at::kFloat && avx2_fma()) {
    return decode_float(x, wqkv, wo, w13, w2, k_cache, v_cache, rope, n, eps);
  }
#endif
  return decode_aten(x, wqkv, wo, w13, w2, k_cache, v_cache, rope, n, eps);
}

TORCH_LIBRARY_IMPL(magvit2, CPU, m) {
  m.impl("decode_block", &decode_block_cpu);
  m.impl("decode_logits", &decode_logits_cpu);
}

}  // namespace magvit2
