// sample_tokens on the CPU: classifier-free guidance, temperature, top-k, top-p and a counter-based draw in one pass
// per row, no full sort (top-k: nth_element; top-p: a heap popped only as far as the nucleus reaches).
//
// Bit-exact with magvit2/ops/sampling_reference.py: the same float32 guidance/temperature roundings, the same
// float64 exp (range reduction + Horner polynomial + a power of two built from bits, no libm exp), the same sequential
// float64 sums in the same order, the same SplitMix64 stream. FMA contraction is off in this file so that every
// multiply and add rounds separately, as the tensor ops of the reference do.
#pragma GCC optimize("fp-contract=off")

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/ops.h"

namespace magvit2 {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull, kMix1 = 0xBF58476D1CE4E5B9ull, kMix2 = 0x94D049BB133111EBull;
constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
constexpr double kInvLn2 = 1.44269504088896338700e00, kExpCutoff = -700.0;
// 1/13!, 1/12!, ..., 1/2! (then two steps with 1): the reference's EXP_COEFFS
constexpr double kExpCoeffs[12] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                   1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,       1.0 / 720.0,
                                   1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,          1.0 / 2.0};

double uniform(int64_t seed, int64_t offset, int64_t row) {
  uint64_t z = (static_cast<uint64_t>(seed) * kGolden) ^ (static_cast<uint64_t>(offset) * kMix1 + static_cast<uint64_t>(row));
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

// w[i] = exp(d[i]) for d <= 0, 0 below the cutoff. Branch-free so that it vectorises (AVX2 clone; no FMA, so every
// multiply and add rounds as in the reference): round-half-even by the 1.5 * 2^52 trick (== torch.round for
// |y| < 2^51), and 2^n from the bits of (n + 1023) + 2^52 shifted into the exponent field (== the reference's
// (n + 1023) << 52).
__attribute__((target_clones("avx2", "default"))) void exp_block(const double* d, double* w, int64_t n) {
  constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  for (int64_t i = 0; i < n; ++i) {
    const double x = d[i];
    const double k = (x * kInvLn2 + kRound) - kRound;
    const double r = (x - k * kLn2Hi) - k * kLn2Lo;
    double p = kExpCoeffs[0];
    for (int j = 1; j < 12; ++j) p = p * r + kExpCoeffs[j];
    p = p * r + 1.0;
    p = p * r + 1.0;
    const double m = std::max(k, -1020.0) + 1023.0 + 4503599627370496.0;  // 2^52: integer m in the low bits
    uint64_t bits;
    std::memcpy(&bits, &m, sizeof(bits));
    bits <<= 52;
    double scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    w[i] = x < kExpCutoff ? 0.0 : p * scale;
  }
}

struct Row {
  std::vector<float> x, tmp;
  std::vector<double> w;
  std::vector<int64_t> heap;
};

template <typename scalar_t>
int64_t sample_row(const scalar_t* logits, const scalar_t* uncond, int64_t vocab, float scale, double temperature,
                   int64_t top_k, double top_p, double u, int64_t row, Row& buf) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float* x = buf.x.data();
  const float t = static_cast<float>(temperature);
  float top = kNegInf;
  int64_t argmax = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    float v = static_cast<float>(logits[i]);
    if (uncond != nullptr) {
      const float un = static_cast<float>(uncond[i]);
      const float diff = v - un;
      const float scaled = diff * scale;
      v = un + scaled;
    }
    TORCH_CHECK_VALUE(!std::isnan(static_cast<float>(logits[i])) && (uncond == nullptr || !std::isnan(static_cast<float>(uncond[i]))),
                      "sample_tokens: row ", row, " has NaN logits");
    v = v / t;
    x[i] = v;
    if (v > top) top = v, argmax = i;
  }
  TORCH_CHECK_VALUE(top != kNegInf, "sample_tokens: row ", row, " has no finite logit");
  TORCH_CHECK_VALUE(top != -kNegInf, "sample_tokens: row ", row, " has an infinite logit (after guidance and temperature)");
  if (top_k == 1) return argmax;

  float threshold = kNegInf;
  if (top_k > 0 && top_k < vocab) {
    float* tmp = buf.tmp.data();
    std::copy(x, x + vocab, tmp);
    std::nth_element(tmp, tmp + (top_k - 1), tmp + vocab, std::greater<float>());
    threshold = tmp[top_k - 1];
  }
  double* w = buf.w.data();
  const double dtop = static_cast<double>(top);
  for (int64_t i = 0; i < vocab; ++i) w[i] = static_cast<double>(x[i]) - dtop;
  exp_block(w, w, vocab);
  double total = 0.0;
  const bool filter_k = top_k > 0 && top_k < vocab;
  for (int64_t i = 0; i < vocab; ++i) {
    if (filter_k && !(x[i] >= threshold)) w[i] = 0.0;
    total += w[i];
  }
  if (top_p < 1.0) {
    // visit kept tokens by x descending (ties: lower index first) while the mass before them is <= p * total
    auto later = [x](int64_t a, int64_t b) { return x[a] < x[b] || (x[a] == x[b] && a > b); };
    auto& heap = buf.heap;
    heap.clear();
    for (int64_t i = 0; i < vocab; ++i)
      if (w[i] > 0) heap.push_back(i);
    std::make_heap(heap.begin(), heap.end(), later);
    const double limit = total * top_p;
    double before = 0.0;
    auto end = heap.end();
    while (end != heap.begin()) {
      const int64_t i = heap.front();
      if (!(before <= limit)) break;
      before += w[i];
      std::pop_heap(heap.begin(), end, later);
      --end;  // popped tokens [end, heap.end()) form the nucleus
    }
    for (auto it = heap.begin(); it != end; ++it) w[*it] = 0.0;  // outside the nucleus
  }
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += w[i];
  const double target = u * sum;
  double cum = 0.0;
  int64_t last = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (w[i] > 0) {
      cum += w[i];
      last = i;
      if (cum > target) return i;
    }
  }
  return last;
}

}  // namespace

at::Tensor sample_tokens_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& uncond, double cfg_scale,
                             double temperature, int64_t top_k, double top_p, int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "sample_tokens: logits must be 2-D (rows, vocab), got ", logits.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(logits.scalar_type()), "sample_tokens: logits must be floating, got ",
                    logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(1) >= 1, "sample_tokens: logits must have a vocabulary of >= 1, got ", logits.sizes());
  TORCH_CHECK_VALUE(temperature > 0, "sample_tokens: temperature must be > 0 (top_k=1 is greedy), got ", temperature);
  TORCH_CHECK_VALUE(top_k >= 0, "sample_tokens: top_k must be >= 0 (0 = off), got ", top_k);
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1, "sample_tokens: top_p must be in (0, 1], got ", top_p);
  const at::Tensor x = logits.contiguous();
  at::Tensor un;
  if (uncond.has_value() && uncond->defined()) {
    TORCH_CHECK_VALUE(uncond->sizes() == logits.sizes() && uncond->scalar_type() == logits.scalar_type(),
                      "sample_tokens: uncond must match logits (", logits.sizes(), ", ", logits.scalar_type(),
                      "), got ", uncond->sizes(), ", ", uncond->scalar_type());
    un = uncond->contiguous();
  }
  const int64_t rows = x.size(0), vocab = x.size(1);
  at::Tensor out = at::empty({rows}, x.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  const float scale = static_cast<float>(cfg_scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sample_tokens_cpu", [&] {
    const scalar_t* lp = x.const_data_ptr<scalar_t>();
    const scalar_t* up = un.defined() ? un.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      Row buf{std::vector<float>(vocab), std::vector<float>(top_k > 0 ? vocab : 0), std::vector<double>(vocab), {}};
      for (int64_t r = begin; r < end; ++r) {
        o[r] = sample_row<scalar_t>(lp + r * vocab, up ? up + r * vocab : nullptr, vocab, scale, temperature, top_k,
                                    top_p, uniform(seed, offset, r), r, buf);
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(magvit2, CPU, m) { m.impl("sample_tokens", &sample_tokens_cpu); }

}  // namespace magvit2
