// Exact LFQ entropy over the full 2^K codebook on the CPU, forward and hand-written backward.
//
// p(c | z) = prod_i q_i(c_i) with q_i(1) = sigmoid(4 t z_i): the per-sample entropy is a sum of binary entropies,
// and the codebook average is avg = P_A^T P_B / N with P_A (N x 2^Ka), P_B (N x 2^Kb) the probabilities of the low
// and high bit groups. Both passes walk the tokens in chunks of kChunkRows: the threads build the chunk's P_A, P_B
// (by doubling products, no exp per entry), BLAS multiplies them, and the buffers are reused for the next chunk, so
// nothing of size N x 2^Ka is stored between forward and backward (the backward rebuilds them: 2^10 products per
// token, next to its 2 x 2^18 multiply-adds). Memory is O(kChunkRows x 2^Ka + 2^K) whatever N is.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/ops.h"

namespace magvit2 {
namespace {

// Tokens per chunk: P_A, P_B (and the backward's two products) of 4096 x 2^9 floats are 8 MiB each, enough for
// BLAS to run near its peak on all threads; memory stays bounded whatever N is.
constexpr int64_t kChunkRows = 4096;
constexpr int64_t kGrainRows = 64;

// q1 = sigmoid(x), q0 = sigmoid(-x) and H_b(q1) = log1p(e) + |x| e / (1 + e) from one e = exp(-|x|) (no
// cancellation at large |x|; the entropy's second term has limit 0 at |x| = inf). NaN stays NaN.
template <typename T>
struct BitProbs {
  T q1, q0, entropy;
};

template <typename T>
inline BitProbs<T> bit_probs(T x) {
  const T a = std::abs(x);
  const T e = std::exp(-a);
  const T big = T(1) / (T(1) + e), small = e * big;
  const T entropy = std::log1p(e) + (e > T(0) ? a * small : T(0));
  return x >= T(0) ? BitProbs<T>{big, small, entropy} : BitProbs<T>{small, big, entropy};
}

// out[0 .. 2^bits) = probability of every LSB-first index of the group: after bit i, [P * q0_i, P * q1_i].
template <typename T>
inline void expand_group(const T* q0, const T* q1, int64_t bits, T* out) {
  out[0] = T(1);
  int64_t len = 1;
  for (int64_t i = 0; i < bits; ++i) {
    const T p0 = q0[i], p1 = q1[i];
    for (int64_t a = 0; a < len; ++a) {
      out[a + len] = out[a] * p1;
      out[a] *= p0;
    }
    len *= 2;
  }
}

// g[a] *= p[a], then set[i] = sum of g over the indices whose bit i is set, by folding the top bit away one at a
// time (2 x 2^bits contiguous adds, against bits x 2^(bits-1) strided ones); returns the sum over all indices.
// g is scratch: it holds partial folds afterwards.
template <typename T>
inline T weighted_bit_sums(T* __restrict g, const T* __restrict p, int64_t bits, T* set) {
  const int64_t width = int64_t(1) << bits;
#pragma omp simd
  for (int64_t a = 0; a < width; ++a) {
    g[a] *= p[a];
  }
  for (int64_t i = bits - 1; i >= 0; --i) {
    const int64_t half = int64_t(1) << i;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t a = 0; a < half; ++a) {
      s += g[half + a];
      g[a] += g[half + a];
    }
    set[i] = s;
  }
  return g[0];
}

// -sum avg log(avg + eps) (0 log 0 = 0) in one pass, accumulated in double.
double codebook_entropy(const at::Tensor& avg, double eps) {
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(avg.scalar_type(), "codebook_entropy_cpu", [&] {
    const scalar_t* p = avg.const_data_ptr<scalar_t>();
    total = at::parallel_reduce(
        0, avg.numel(), 1 << 14, 0.0,
        [&](int64_t begin, int64_t end, double acc) {
          for (int64_t j = begin; j < end; ++j) {
            const double v = static_cast<double>(p[j]);
            acc -= v == 0.0 ? 0.0 : v * std::log(v + eps);
          }
          return acc;
        },
        std::plus<double>());
  });
  return total;
}

// d_avg = scale x (g_cb x d/d avg [-sum avg log(avg + eps)] + grad_avg) with d/d avg = -(log(avg + eps) +
// avg / (avg + eps)); at eps = 0, avg is clamped to the smallest normal there so the slope stays finite.
at::Tensor codebook_entropy_grad(const at::Tensor& avg, double eps, double g_cb, const at::Tensor& grad_avg,
                                 double scale) {
  at::Tensor d_avg = at::empty_like(avg);
  AT_DISPATCH_FLOATING_TYPES(avg.scalar_type(), "codebook_entropy_grad_cpu", [&] {
    const scalar_t* p = avg.const_data_ptr<scalar_t>();
    const scalar_t* extra = grad_avg.defined() ? grad_avg.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* d = d_avg.mutable_data_ptr<scalar_t>();
    const scalar_t tiny = std::numeric_limits<scalar_t>::min();
    const scalar_t e = static_cast<scalar_t>(eps), gc = static_cast<scalar_t>(g_cb), sc = static_cast<scalar_t>(scale);
    at::parallel_for(0, avg.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const scalar_t v = p[j];
        const scalar_t slope = e == scalar_t(0) ? std::log(std::max(v, tiny)) + scalar_t(1)
                                                : std::log(v + e) + v / (v + e);
        d[j] = sc * ((gc == scalar_t(0) ? scalar_t(0) : -gc * slope) + (extra != nullptr ? extra[j] : scalar_t(0)));
      }
    });
  });
  return d_avg;
}

// Rows [begin, end) of the chunk starting at token c0: per-bit sigmoids q0, q1 (chunk, K), the group products
// P_A (chunk, 2^Ka), P_B (chunk, 2^Kb) and, when h is given, each token's entropy sum_i H_b(q_i).
template <typename scalar_t, typename acc_t>
void build_rows(const scalar_t* z, int64_t s0, int64_t s1, int64_t c0, int64_t begin, int64_t end, int64_t k,
                int64_t ka, acc_t scale, acc_t* q0, acc_t* q1, acc_t* pa, acc_t* pb, acc_t* h) {
  const int64_t kb = k - ka, wa = int64_t(1) << ka, wb = int64_t(1) << kb;
  for (int64_t row = begin; row < end; ++row) {
    const scalar_t* zr = z + (c0 + row) * s0;
    acc_t* r0 = q0 + row * k;
    acc_t* r1 = q1 + row * k;
    acc_t entropy = 0;
    for (int64_t i = 0; i < k; ++i) {
      const acc_t x = scale * static_cast<acc_t>(zr[i * s1]);
      const BitProbs<acc_t> q = bit_probs(x);
      r1[i] = q.q1;
      r0[i] = q.q0;
      entropy += q.entropy;
    }
    if (h != nullptr) {
      h[row] = entropy;
    }
    expand_group(r0, r1, ka, pa + row * wa);
    expand_group(r0 + ka, r1 + ka, kb, pb + row * wb);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lfq_entropy_cpu(const at::Tensor& z, double inv_temperature,
                                                               double eps) {
  check_entropy_args("lfq_entropy", z, inv_temperature, eps);
  const int64_t n = z.size(0), k = z.size(1);
  const int64_t ka = (k + 1) / 2, kb = k / 2, wa = int64_t(1) << ka, wb = int64_t(1) << kb;
  const at::TensorOptions opts = z.options().dtype(opmath(z.scalar_type()));
  const int64_t chunk = std::max<int64_t>(1, std::min(n, kChunkRows));
  at::Tensor q0 = at::empty({chunk, k}, opts), q1 = at::empty({chunk, k}, opts), h = at::empty({chunk}, opts);
  at::Tensor pa = at::empty({chunk, wa}, opts), pb = at::empty({chunk, wb}, opts);
  at::Tensor avg = at::zeros({wa, wb}, opts);
  at::Tensor entropy_sum = at::zeros({}, opts.dtype(at::kDouble));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "lfq_entropy_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(4.0 * inv_temperature);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t s0 = z.stride(0), s1 = z.stride(1);
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
      const int64_t rows = std::min(chunk, n - c0);
      acc_t* hp = h.mutable_data_ptr<acc_t>();
      at::parallel_for(0, rows, kGrainRows, [&](int64_t begin, int64_t end) {
        build_rows<scalar_t, acc_t>(zp, s0, s1, c0, begin, end, k, ka, scale, q0.mutable_data_ptr<acc_t>(),
                                    q1.mutable_data_ptr<acc_t>(), pa.mutable_data_ptr<acc_t>(),
                                    pb.mutable_data_ptr<acc_t>(), hp);
      });
      entropy_sum.add_(h.narrow(0, 0, rows).sum(0, /*keepdim=*/false, at::kDouble));
      // avg += P_A^T P_B over the chunk: (2^Ka, rows) @ (rows, 2^Kb), one multi-threaded BLAS call.
      avg.addmm_(pa.narrow(0, 0, rows).t(), pb.narrow(0, 0, rows));
    }
  });

  const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(n, 1));
  avg.mul_(inv_n);
  at::Tensor per_sample = entropy_sum.mul_(inv_n).to(opts.dtype());
  at::Tensor codebook = at::scalar_tensor(codebook_entropy(avg, eps), opts);
  return {per_sample, codebook, avg};
}

at::Tensor lfq_entropy_backward_cpu(const at::Tensor& grad_per_sample, const at::Tensor& grad_codebook,
                                    const std::optional<at::Tensor>& grad_avg, const at::Tensor& z,
                                    const at::Tensor& avg, double inv_temperature, double eps) {
  check_entropy_args("lfq_entropy_backward", z, inv_temperature, eps);
  const int64_t n = z.size(0), k = z.size(1);
  const int64_t ka = (k + 1) / 2, kb = k / 2, wa = int64_t(1) << ka, wb = int64_t(1) << kb;
  const at::ScalarType acc = opmath(z.scalar_type());
  const at::TensorOptions opts = z.options().dtype(acc);
  check_entropy_backward_args(z, avg, grad_per_sample, grad_codebook);
  at::Tensor grad = at::empty({n, k}, z.options());
  if (n == 0) {
    return grad;
  }
  const double inv_n = 1.0 / static_cast<double>(n);
  const double g_ps = grad_per_sample.item<double>() * inv_n;
  const double g_cb = grad_codebook.item<double>();
  const bool has_avg_grad = grad_avg.has_value() && grad_avg->defined();
  const bool codebook_used = g_cb != 0.0 || has_avg_grad;

  at::Tensor d_avg;
  if (codebook_used) {
    d_avg = codebook_entropy_grad(avg, eps, g_cb, has_avg_grad ? grad_avg->to(acc).contiguous() : at::Tensor(), inv_n);
  }

  const int64_t chunk = std::min(n, kChunkRows);
  at::Tensor q0 = at::empty({chunk, k}, opts), q1 = at::empty({chunk, k}, opts);
  at::Tensor pa, pb, ga, gb;
  if (codebook_used) {
    pa = at::empty({chunk, wa}, opts);
    pb = at::empty({chunk, wb}, opts);
    ga = at::empty({chunk, wa}, opts);
    gb = at::empty({chunk, wb}, opts);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "lfq_entropy_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(4.0 * inv_temperature);
    const acc_t gps = static_cast<acc_t>(g_ps);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t s0 = z.stride(0), s1 = z.stride(1);
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
      const int64_t rows = std::min(chunk, n - c0);
      acc_t* q0p = q0.mutable_data_ptr<acc_t>();
      acc_t* q1p = q1.mutable_data_ptr<acc_t>();
      if (codebook_used) {
        at::parallel_for(0, rows, kGrainRows, [&](int64_t begin, int64_t end) {
          build_rows<scalar_t, acc_t>(zp, s0, s1, c0, begin, end, k, ka, scale, q0p, q1p,
                                      pa.mutable_data_ptr<acc_t>(), pb.mutable_data_ptr<acc_t>(), nullptr);
        });
        // dL/dP_A = P_B dAvg^T and dL/dP_B = P_A dAvg over the chunk: two multi-threaded BLAS calls.
        at::Tensor ga_rows = ga.narrow(0, 0, rows), gb_rows = gb.narrow(0, 0, rows);
        at::mm_out(ga_rows, pb.narrow(0, 0, rows), d_avg.t());
        at::mm_out(gb_rows, pa.narrow(0, 0, rows), d_avg);
      }
      at::parallel_for(0, rows, kGrainRows, [&](int64_t begin, int64_t end) {
        acc_t d1[kMaxEntropyBits];  // dL/dlog q_i(1); dL/dlog q_i(0) = (group total) - d1[i]
        for (int64_t row = begin; row < end; ++row) {
          const int64_t r = c0 + row;
          acc_t total_a = 0, total_b = 0;
          if (codebook_used) {
            total_a = weighted_bit_sums(ga.mutable_data_ptr<acc_t>() + row * wa,
                                        pa.const_data_ptr<acc_t>() + row * wa, ka, d1);
            total_b = weighted_bit_sums(gb.mutable_data_ptr<acc_t>() + row * wb,
                                        pb.const_data_ptr<acc_t>() + row * wb, kb, d1 + ka);
          }
          for (int64_t i = 0; i < k; ++i) {
            const acc_t x = scale * static_cast<acc_t>(zp[r * s0 + i * s1]);
            acc_t p1, p0;
            if (codebook_used) {
              p1 = q1p[row * k + i];
              p0 = q0p[row * k + i];
            } else {
              const BitProbs<acc_t> q = bit_probs(x);
              p1 = q.q1;
              p0 = q.q0;
            }
            const acc_t w = p1 * p0;
            // d H_b / dx = -x s (1 - s): 0 at |x| = inf (w = 0), NaN stays NaN.
            acc_t g = gps * scale * (w == acc_t(0) ? acc_t(0) : -x * w);
            if (codebook_used) {
              const acc_t one = d1[i], zero = (i < ka ? total_a : total_b) - d1[i];
              g += scale * (one * p0 - zero * p1);
            }
            gp[r * k + i] = static_cast<scalar_t>(g);
          }
        }
      });
    }
  });
  return grad;
}

// --- the tiled path: K up to 32 without the 2^K average ------------------------------------------------------------
//
// M = P_A^T P_B / N is walked in tiles (never stored whole): each tile is one BLAS call, then one pass turns it into
// its share of -sum M log(M + eps) (accumulated in double) and, when a gradient is wanted, into D = dH/dM / N in
// place, which two more BLAS calls fold into dH/dP_A = P_B D^T and dH/dP_B = P_A D. The forward thus computes the
// codebook entropy's gradient w.r.t. z (N x K, the backward only scales it): three GEMMs of N x 2^K multiply-adds in
// all, against four for a flash-attention style backward that recomputes the tiles. Memory: P_A, P_B and their
// gradients (N x 2^ceil(K/2) each) plus one tile.

namespace {

// Edge of the square tiles of M: 2048 x 2048 floats (16 MiB). Each tile costs a few thread synchronisations (three
// BLAS calls and the epilogue); on 2 shared cores each can wait a scheduler slice, so fewer, larger tiles run
// faster: at K = 26, N = 64 the forward took 1.25 s with 1024-tiles, 0.71 s with 2048 and 0.63 s with 4096 (the
// bare 1024-tiled GEMMs 0.54 s). 2048 keeps the tile at a quarter of P_A, P_B and their gradients at K = 24, N = 2048.
constexpr int64_t kTileEdge = 2048;

// log(v) for a float v >= 0 in a form the compiler vectorizes (std::log stays a scalar call: at K = 32 the
// epilogue takes 2^32 logs, as long as the GEMMs at N = 64). kClamp: v below the smallest normal (0 and -0 included)
// is taken as it, by an integer max on the bits (a float select would not vectorize); otherwise v must be normal.
// v = 2^e m with m in [sqrt(1/2), sqrt(2)) read off the bits, log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172:
// the series to s^9 leaves < 1e-9; measured against log in double over [1e-38, 4]: 1.9e-7 relative (1.6 ulp).
// NaN in v gives a finite value here; the callers multiply by v or add v / (v + eps), which keeps the NaN.
template <bool kClamp>
inline float log_positive(float v) {
  int32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if constexpr (kClamp) {
    bits = std::max(bits, int32_t{0x00800000});
  }
  const int32_t e = (bits - 0x3f3504f3) >> 23;  // arithmetic shift: the exponent that puts m in [sqrt(1/2), sqrt(2))
  bits -= e * (1 << 23);
  float m;
  std::memcpy(&m, &bits, sizeof m);
  const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  const float series = 2.0f + s2 * (0.6666666667f + s2 * (0.4f + s2 * (0.2857142857f + s2 * 0.2222222222f)));
  return s * series + static_cast<float>(e) * 0.6931471806f;
}

template <bool kClamp>
inline double log_positive(double v) {
  return std::log(kClamp ? std::max(v, std::numeric_limits<double>::min()) : v);
}

// One row of a tile: terms[c] = v log(v + eps) with v = row[c] inv_n and, with kGrad, row[c] = D = -(log(v + eps) +
// v / (v + eps)) inv_n (eps = 0: v clamped to the smallest normal in the log, as codebook_entropy_grad does). No
// branch and no reduction in the loop, so that it vectorizes; the caller sums the terms in double.
template <typename T, bool kGrad, bool kEpsZero>
void tile_row(T* __restrict row, T* __restrict terms, int64_t cols, T inv_n, T eps) {
  for (int64_t c = 0; c < cols; ++c) {
    const T v = row[c] * inv_n;
    const T log_v = log_positive<kEpsZero>(kEpsZero ? v : v + eps);
    terms[c] = v * log_v;  // 0 at v = 0: the log is finite there
    if constexpr (kGrad) {
      row[c] = -(log_v + (kEpsZero ? T(1) : v / (v + eps))) * inv_n;
    }
  }
}

// Sum in double with four independent accumulators (one chain would cost the add latency per term).
template <typename T>
double sum_double(const T* terms, int64_t n) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t c = 0;
  for (; c + 4 <= n; c += 4) {
    for (int j = 0; j < 4; ++j) s[j] += static_cast<double>(terms[c + j]);
  }
  for (; c < n; ++c) s[0] += static_cast<double>(terms[c]);
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// One tile m (rows x cols, row stride ld) of N x M: returns its -sum v log(v + eps) with v = m inv_n and, with
// `grad`, overwrites m with D (tile_row).
template <typename T>
double tile_entropy(T* m, int64_t rows, int64_t cols, int64_t ld, T inv_n, T eps, bool grad) {
  return at::parallel_reduce(
      0, rows, 16, 0.0,
      [&](int64_t begin, int64_t end, double acc) {
        std::vector<T> terms(cols);
        for (int64_t r = begin; r < end; ++r) {
          T* row = m + r * ld;
          if (grad) {
            eps == T(0) ? tile_row<T, true, true>(row, terms.data(), cols, inv_n, eps)
                        : tile_row<T, true, false>(row, terms.data(), cols, inv_n, eps);
          } else {
            eps == T(0) ? tile_row<T, false, true>(row, terms.data(), cols, inv_n, eps)
                        : tile_row<T, false, false>(row, terms.data(), cols, inv_n, eps);
          }
          acc -= sum_double(terms.data(), cols);
        }
        return acc;
      },
      std::plus<double>());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lfq_entropy_tiled_cpu(const at::Tensor& z, double inv_temperature,
                                                                     double eps, bool need_grad, int64_t tile) {
  check_entropy_tiled_args(z, inv_temperature, eps, tile);
  const int64_t n = z.size(0), k = z.size(1);
  const int64_t ka = (k + 1) / 2, kb = k / 2, wa = int64_t(1) << ka, wb = int64_t(1) << kb;
  const at::TensorOptions opts = z.options().dtype(opmath(z.scalar_type()));
  const int64_t edge = tile > 0 ? tile : kTileEdge, ta = std::min(wa, edge), tb = std::min(wb, edge);
  at::Tensor grad = at::zeros({need_grad ? n : 0, k}, opts);
  if (n == 0) {
    return {at::zeros({}, opts), at::zeros({}, opts), grad};
  }
  // (N, K) sigmoids, (N,) entropies, P_A (N, 2^Ka), P_B (N, 2^Kb): 64 MiB at K = 24, N = 2048 (32 MiB at K = 32,
  // N = 64); the gradient tables double it.
  at::Tensor q0 = at::empty({n, k}, opts), q1 = at::empty({n, k}, opts), h = at::empty({n}, opts);
  at::Tensor pa = at::empty({n, wa}, opts), pb = at::empty({n, wb}, opts);
  at::Tensor ga, gb;
  if (need_grad) {
    ga = at::zeros({n, wa}, opts);
    gb = at::zeros({n, wb}, opts);
  }
  at::Tensor m = at::empty({ta, tb}, opts);
  const double inv_n = 1.0 / static_cast<double>(n);
  double total = 0.0;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "lfq_entropy_tiled_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(4.0 * inv_temperature);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t s0 = z.stride(0), s1 = z.stride(1);
    acc_t* q0p = q0.mutable_data_ptr<acc_t>();
    acc_t* q1p = q1.mutable_data_ptr<acc_t>();
    at::parallel_for(0, n, kGrainRows, [&](int64_t begin, int64_t end) {
      build_rows<scalar_t, acc_t>(zp, s0, s1, 0, begin, end, k, ka, scale, q0p, q1p, pa.mutable_data_ptr<acc_t>(),
                                  pb.mutable_data_ptr<acc_t>(), h.mutable_data_ptr<acc_t>());
    });
    for (int64_t a0 = 0; a0 < wa; a0 += ta) {
      const int64_t rows = std::min(ta, wa - a0);
      const at::Tensor pa_tile = pa.narrow(1, a0, rows);  // (N, rows), row stride 2^Ka: BLAS reads it in place
      for (int64_t b0 = 0; b0 < wb; b0 += tb) {
        const int64_t cols = std::min(tb, wb - b0);
        const at::Tensor pb_tile = pb.narrow(1, b0, cols);
        at::Tensor mt = m.narrow(0, 0, rows).narrow(1, 0, cols);
        at::mm_out(mt, pa_tile.t(), pb_tile);  // (rows, N) @ (N, cols) = N x M tile
        total += tile_entropy<acc_t>(mt.mutable_data_ptr<acc_t>(), rows, cols, tb, static_cast<acc_t>(inv_n),
                                     static_cast<acc_t>(eps), need_grad);
        if (need_grad) {
          ga.narrow(1, a0, rows).addmm_(pb_tile, mt.t());  // (N, cols) @ (cols, rows)
          gb.narrow(1, b0, cols).addmm_(pa_tile, mt);      // (N, rows) @ (rows, cols)
        }
      }
    }
    if (need_grad) {
      acc_t* gp = grad.mutable_data_ptr<acc_t>();
      at::parallel_for(0, n, kGrainRows, [&](int64_t begin, int64_t end) {
        acc_t d1[kMaxTiledEntropyBits];  // dH/dlog q_i(1); dH/dlog q_i(0) = (group total) - d1[i]
        for (int64_t row = begin; row < end; ++row) {
          const acc_t total_a = weighted_bit_sums(ga.mutable_data_ptr<acc_t>() + row * wa,
                                                  pa.const_data_ptr<acc_t>() + row * wa, ka, d1);
          const acc_t total_b = weighted_bit_sums(gb.mutable_data_ptr<acc_t>() + row * wb,
                                                  pb.const_data_ptr<acc_t>() + row * wb, kb, d1 + ka);
          for (int64_t i = 0; i < k; ++i) {
            const acc_t p1 = q1p[row * k + i], p0 = q0p[row * k + i];
            const acc_t one = d1[i], zero = (i < ka ? total_a : total_b) - d1[i];
            gp[row * k + i] = scale * (one * p0 - zero * p1);
          }
        }
      });
    }
  });
  at::Tensor per_sample = h.sum(0, /*keepdim=*/false, at::kDouble).mul_(inv_n).to(opts.dtype());
  return {per_sample, at::scalar_tensor(total, opts), grad};
}

TORCH_LIBRARY_IMPL(magvit2, CPU, m) {
  m.impl("lfq_entropy", &lfq_entropy_cpu);
  m.impl("lfq_entropy_backward", &lfq_entropy_backward_cpu);
  m.impl("lfq_entropy_tiled", &lfq_entropy_tiled_cpu);
}

}  // namespace magvit2
