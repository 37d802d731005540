// sample_tokens on the CPU: classifier-free guidance, temperature, top-k, top-p and a counter-based draw, per row a
// few vectorised passes over the vocabulary and no sort of it. top-k finds the k-th largest logit (block maxima for a
// small k, a radix select by counting for a large one) and computes weights for the kept tokens only; top-p is a mass
// threshold (reference docstring): the cutoff token is guessed from mass buckets and checked by one exact pass, so
// the cost does not depend on the nucleus width; the draw is a binary search of the running sums of that pass.
//
// Measured (B = 64, V = 4096, guidance on, one thread of the 2-core EPYC, the machine shared, medians of interleaved
// calls): no filter 0.6 ms a call, top-p 0.5 to 0.99 at logit scales 0.25 to 4 (a nucleus of ~3,000 tokens down to
// a few) 1.0-1.5 ms, top-k 50 0.5 ms, top-k 500 1.5 ms. The sort-based top-p this replaced took 0.74 ms for a
// 5-token nucleus and 12 ms for a 3,600-token one.
//
// Bit-exact with magvit2/ops/reference/sampling.py: the same float32 guidance/temperature roundings, the same float32
// exp (range reduction + Horner polynomial + a power of two built from bits, no libm exp), the same sequential float64
// sums in the same order, the same SplitMix64 stream.
//
// fp-contract=off: every multiply and add rounds separately, as the tensor ops of the reference do (no FMA).
// no-trapping-math: lets GCC turn the selects of the exp and guidance loops into blends, so that they vectorise; it
// changes no rounding. Without it the loops stay scalar: exp 7.6 instead of 1.6 ns/element here.
#pragma GCC optimize("fp-contract=off", "no-trapping-math")

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/arch.h"
#include "common/checks.h"
#include "common/exp.h"
#include "common/ops.h"

namespace magvit2 {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull, kMix1 = 0xBF58476D1CE4E5B9ull, kMix2 = 0x94D049BB133111EBull;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
double uniform(int64_t seed, int64_t offset, int64_t row) {
  uint64_t z = (static_cast<uint64_t>(seed) * kGolden) ^ (static_cast<uint64_t>(offset) * kMix1 + static_cast<uint64_t>(row));
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

// x = (u + (c - u) * scale) / t (or c / t without u) into x; returns the row maximum and sets *nan when an x is NaN
// (a NaN input, or an infinite logit in both c and u). The simd reductions let the loop vectorise; the maximum is
// exact in any order (a NaN row is rejected before its maximum is used).
MAGVIT2_AVX2_CLONES float guide(const float* c, const float* u, int64_t n, float scale, float t, float* x, bool* nan) {
  float top = kNegInf;
  int bad = 0;
  if (u != nullptr) {
#pragma omp simd reduction(max : top) reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) {
      const float v = (u[i] + (c[i] - u[i]) * scale) / t;
      x[i] = v;
      top = top < v ? v : top;
      bad |= v != v;
    }
  } else {
#pragma omp simd reduction(max : top) reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) {
      const float v = c[i] / t;
      x[i] = v;
      top = top < v ? v : top;
      bad |= v != v;
    }
  }
  *nan = bad != 0;
  return top;
}

// float -> uint32 whose order is x's (-0 and +0 alike, as x's comparisons; no NaN here), and back (+0 for the zeros).
inline uint32_t order_key(float x) {
  uint32_t u;
  x = x == 0.0f ? 0.0f : x;
  std::memcpy(&u, &x, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float from_order_key(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

MAGVIT2_AVX2_CLONES void order_keys(const float* x, int64_t n, uint32_t* keys) {
  for (int64_t j = 0; j < n; ++j) keys[j] = order_key(x[j]);
}

// The digit (bin) where the count from the top reaches need; need becomes the rank inside that bin.
int top_digit(const uint32_t* hist, int bins, int64_t& need) {
  int64_t above = 0;
  for (int b = bins - 1; b > 0; --b) {
    if (above + hist[b] >= need) {
      need -= above;
      return b;
    }
    above += hist[b];
  }
  need -= above;
  return 0;
}

// The order key of the k-th largest x (1 <= k <= n, repeats counted): a radix select by counting, 11 + 11 + 10 bits,
// no sort and no partition. The first pass counts the whole row (two tables, so that a run of one bin is two
// chains); the next two count only the tokens of the bins chosen so far, compacted into keys. B = 64, V = 4096,
// k = 500 with guidance, one thread: 1.5 ms a call against 5.4 with std::nth_element on a copy of the row (its
// partition's branches mispredict). keys: n uint32 of scratch.
uint32_t kth_largest_key(const float* x, int64_t n, int64_t k, uint32_t* keys) {
  order_keys(x, n, keys);
  uint32_t h[2][2048] = {};
  for (int64_t j = 0; j + 1 < n; j += 2) ++h[0][keys[j] >> 21], ++h[1][keys[j + 1] >> 21];
  if (n % 2) ++h[0][keys[n - 1] >> 21];
  for (int b = 0; b < 2048; ++b) h[0][b] += h[1][b];
  int64_t need = k;
  const uint32_t d1 = static_cast<uint32_t>(top_digit(h[0], 2048, need));
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j)
    if ((keys[j] >> 21) == d1) keys[m++] = keys[j];
  std::fill(h[0], h[0] + 2048, 0u);
  for (int64_t j = 0; j < m; ++j) ++h[0][(keys[j] >> 10) & 2047u];
  const uint32_t d2 = static_cast<uint32_t>(top_digit(h[0], 2048, need));
  int64_t m2 = 0;
  for (int64_t j = 0; j < m; ++j)
    if (((keys[j] >> 10) & 2047u) == d2) keys[m2++] = keys[j];
  std::fill(h[0], h[0] + 1024, 0u);
  for (int64_t j = 0; j < m2; ++j) ++h[0][keys[j] & 1023u];
  const uint32_t d3 = static_cast<uint32_t>(top_digit(h[0], 1024, need));
  return (d1 << 21) | (d2 << 10) | d3;
}

// The tokens with x >= the k-th largest x (repeats counted, so ties at the threshold are kept), in index order into
// idx; returns their count. For 1 < k < n and no NaN. The k-th largest of the maxima of >= 2k blocks is a lower
// bound of the threshold (k blocks hold a value >= it), so only the ~k blocks whose maximum reaches it are scanned,
// and nth_element orders the maxima and the few tokens found instead of a copy of the row: V = 4096, k = 50 costs
// 1.8 instead of 12 ns/element here (nth_element on a copy, then a scan for the kept). Blocks of a multiple of 8 tokens, so that their maxima vectorise; for k > n / 16
// there is nothing to gain and a radix select by counting (kth_largest_key) takes the row (nth_element below 1024 tokens). bm: n / 8 + 1 floats, tmp: n floats.
int64_t top_k_tokens(const float* x, int64_t n, int64_t k, float* bm, float* tmp, int64_t* idx,
                     uint32_t* rkeys) {
  const int64_t size = n / (2 * k) / 8 * 8;
  int64_t m = 0;
  if (size == 0 && n >= 1024) {  // a wide cut: the threshold by counting, then one scan for the kept
    const float threshold = from_order_key(kth_largest_key(x, n, k, rkeys));
    for (int64_t i = 0; i < n; ++i)
      if (x[i] >= threshold) idx[m++] = i;
    return m;
  } else if (size == 0) {  // a short row: nth_element beats the counting tables' fixed cost (5k bins)
    std::copy(x, x + n, tmp);
    for (int64_t i = 0; i < n; ++i) idx[i] = i;
    m = n;
  } else {
    int64_t blocks = 0;
    for (int64_t s = 0; s < n; s += size) {
      float top = kNegInf;
      const int64_t end = std::min(n, s + size);
#pragma omp simd reduction(max : top)
      for (int64_t i = s; i < end; ++i) top = top < x[i] ? x[i] : top;
      bm[blocks++] = top;
    }
    std::copy(bm, bm + blocks, tmp);
    std::nth_element(tmp, tmp + (k - 1), tmp + blocks, std::greater<float>());  // blocks >= n / size >= 2k
    const float low = tmp[k - 1];
    for (int64_t b = 0; b < blocks; ++b) {
      if (!(bm[b] >= low)) continue;
      for (int64_t i = b * size; i < std::min(n, (b + 1) * size); ++i)
        if (x[i] >= low) idx[m++] = i;  // a few percent pass: a branch predicts better than a branch-free append
    }
    for (int64_t j = 0; j < m; ++j) tmp[j] = x[idx[j]];
  }
  std::nth_element(tmp, tmp + (k - 1), tmp + m, std::greater<float>());  // m >= k
  const float threshold = tmp[k - 1];
  int64_t kept = 0;
  for (int64_t j = 0; j < m; ++j)
    if (x[idx[j]] >= threshold) idx[kept++] = idx[j];
  return kept;
}

// bucket[j] = floor(min(top - x[j], 88) * per), clamped to last: a bucket never decreases as x does (each step
// rounds monotonically). Vectorised (AVX2 clone).
MAGVIT2_AVX2_CLONES void bin(const float* x, float top, int64_t n, float per, int last, uint16_t* bucket) {
  for (int64_t j = 0; j < n; ++j) {
    const float d = std::min(top - x[j], 88.0f);
    bucket[j] = static_cast<uint16_t>(std::min(last, static_cast<int>(d * per)));
  }
}

struct Row {
  std::vector<float> x, w, tmp;  // (V,): guided logits, weights by token, scratch
  std::vector<float> bm;         // (V / 8 + 1,): block maxima (top-k)
  std::vector<double> cum;       // (V,): running sums of the weights (the draw)
  std::vector<int64_t> idx;      // (V,): top-p candidates
  std::vector<int64_t> sel;      // (V,): top-k: the kept tokens
  std::vector<uint16_t> bucket;  // (V,): top-p mass buckets
  std::vector<uint64_t> keys;    // top-p: the last few candidates as sort keys
  std::vector<float> gt, ge;     // (V,): top-p: weights before / up to the cutoff token
  std::vector<uint32_t> rkeys;   // (V,): top-k: order keys for the radix select
};


// The nucleus order as one integer, larger = earlier: x descending, then position ascending (positions are in index
// order, so that is the lower index first).
inline uint64_t order_value(float x, int64_t pos) {
  return (static_cast<uint64_t>(order_key(x)) << 32) | (0xffffffffu - static_cast<uint64_t>(pos));
}

// The draw over weights w[0, n) (the kept tokens in index order): the first position whose running sum exceeds
// u * (sum of all of them); the last if rounding leaves none. Sums sequential in index order, as the reference's.
int64_t draw(const float* w, int64_t n, double u) {
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) sum += static_cast<double>(w[j]);
  const double target = u * sum;
  double cum = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    cum += static_cast<double>(w[j]);
    if (cum > target) return j;
  }
  return n - 1;
}

// The weights of the tokens strictly before a cutoff token (order key ck, position cp) in the nucleus order into
// gt[j] and up to it into ge[j] (0 elsewhere); returns the count of tokens of weight > 0 after it. Branch-free and
// vectorised (AVX2 clone), so that the sequential sums below are pure add chains.
MAGVIT2_AVX2_CLONES int64_t split(const float* x, const float* w, int64_t n, uint32_t ck, int64_t cp, float* gt,
                                  float* ge) {
  // int32 lanes throughout (n < 2^31): the key as a signed int whose order is x's, order_key(x) ^ 2^31
  const int32_t sck = static_cast<int32_t>(ck ^ 0x80000000u), icp = static_cast<int32_t>(cp);
  const int32_t n32 = static_cast<int32_t>(n);
  int32_t below = 0;
  for (int32_t j = 0; j < n32; ++j) {
    const float xv = x[j] == 0.0f ? 0.0f : x[j];
    int32_t bits;
    std::memcpy(&bits, &xv, sizeof(bits));
    const int32_t sk = bits ^ ((bits >> 31) & 0x7fffffff);
    const int32_t tie = -static_cast<int32_t>(sk == sck);  // all ones on a tie
    const int32_t before = -static_cast<int32_t>(sk > sck) | (tie & -static_cast<int32_t>(j < icp));
    const int32_t upto = -static_cast<int32_t>(sk > sck) | (tie & -static_cast<int32_t>(j <= icp));
    gt[j] = before ? w[j] : 0.0f;
    ge[j] = upto ? w[j] : 0.0f;
    below += (upto == 0) & (w[j] > 0.0f);
  }
  return below;
}

// One exact pass for a cutoff token c (order value vc) over tokens [0, n): sequential float64 sums in index order of
// all weights (Z), of those strictly before c in the order (M(c)) and of those up to c (the nucleus if c is its last
// token; its running sums go to cum for the draw); `below` counts the tokens of weight > 0 after c. The three sums
// are independent chains, so the pass costs about one sequential sum (the add latency bounds it): 1.3 ns/element
// here, 10 with the selects inside the chain loop (mispredicted branches).
struct Exact {
  double z, before, upto;
  int64_t below;
};
Exact exact_pass(const float* x, const float* w, int64_t n, uint64_t vc, Row& buf) {
  float* gt = buf.gt.data();
  float* ge = buf.ge.data();
  double* cum = buf.cum.data();
  const int64_t below = split(x, w, n, static_cast<uint32_t>(vc >> 32),
                              static_cast<int64_t>(0xffffffffu - (vc & 0xffffffffu)), gt, ge);
  double z = 0.0, before = 0.0, upto = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    z += static_cast<double>(w[j]);
    before += static_cast<double>(gt[j]);
    upto += static_cast<double>(ge[j]);
    cum[j] = upto;
  }
  return {z, before, upto, below};
}

// The top-p draw over tokens [0, n) (index order; x and float32 weights, 0 for tokens that cannot be drawn; top: the
// largest x): the nucleus of magvit2/ops/reference/sampling.py without ordering it. The cutoff token c (the last
// token with M(c) <= p * Z) is first guessed from mass buckets: d = top - x binned into up to 512 buckets, each bucket's
// mass summed in any order; the bucket where the mass from the top crosses p * Z holds c, and its tokens are binned
// again over their own d range until at most 48 remain, which are ordered by (x, position) and walked. The guess only
// names a token: one exact pass (exact_pass) then checks M(c) <= p * Z < M(next) (M never decreases along the
// order), and when rounding made the guess wrong (M within ~1e-13 of the limit) a bisection over the order value, one
// exact pass per step, finds the cutoff. Every pass costs the same for a 1-token and a 4000-token nucleus. Returns the
// drawn position: the first whose running nucleus sum exceeds u * (nucleus sum).
int64_t draw_top_p(const float* x, const float* w, int64_t n, float top, double top_p, double u, Row& buf) {
  constexpr int kMaxBuckets = 512, kFew = 48;
  constexpr float kRange = 88.0f;  // weights are 0 beyond d = 87.34
  // n / 8 buckets, 16 to 512: a short row pays for few (V = 64: 0.07 ms a call at B = 64 with 512)
  const int kBuckets = static_cast<int>(std::clamp<int64_t>(n / 8, 16, kMaxBuckets));
  uint16_t* bucket = buf.bucket.data();
  int64_t* cand = buf.idx.data();
  double* cum = buf.cum.data();
  double mass[2][kMaxBuckets];
  std::fill(&mass[0][0], &mass[0][0] + kBuckets, 0.0);
  std::fill(&mass[1][0], &mass[1][0] + kBuckets, 0.0);
  const float per = static_cast<float>(kBuckets) / kRange;
  bin(x, top, n, per, kBuckets - 1, bucket);
  for (int64_t j = 0; j + 1 < n; j += 2) {  // two tables: a run of one bucket is two chains, not one
    mass[0][bucket[j]] += static_cast<double>(w[j]);
    mass[1][bucket[j + 1]] += static_cast<double>(w[j + 1]);
  }
  if (n % 2) mass[0][bucket[n - 1]] += static_cast<double>(w[n - 1]);
  double zh = 0.0;
  for (int b = 0; b < kBuckets; ++b) zh += mass[0][b] + mass[1][b];
  const double limit_h = zh * top_p;
  // the crossing bucket: the first whose mass, added to that of the buckets above it, exceeds the limit
  double base = 0.0;
  int b = 0;
  for (; b < kBuckets - 1; ++b) {
    const double m = mass[0][b] + mass[1][b];
    if (base + m > limit_h) break;
    base += m;
  }
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j)
    if (bucket[j] == b) cand[m++] = j;  // one bucket of many: a branch predicts better than a branch-free append
  if (m == 0) {  // rounding put the crossing past every token with a weight: guess the lowest of the order
    for (int64_t j = 0; j < n; ++j) cand[m] = j, m += w[j] > 0;
    base = 0.0;
  }
  // refine: bin the candidates over their own d range; keep the crossing sub-bucket
  while (m > kFew) {
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (int64_t j = 0; j < m; ++j) {
      const float d = top - x[cand[j]];
      lo = std::min(lo, d), hi = std::max(hi, d);
    }
    if (!(hi > lo)) break;  // one d value: the order is by x and position below
    const float per2 = 256.0f / (hi - lo);
    double sub[256] = {};
    for (int64_t j = 0; j < m; ++j)
      sub[std::min(255, static_cast<int>((top - x[cand[j]] - lo) * per2))] += static_cast<double>(w[cand[j]]);
    int s = 0;
    for (; s < 255; ++s) {
      if (base + sub[s] > limit_h) break;
      base += sub[s];
    }
    int64_t k = 0;
    for (int64_t j = 0; j < m; ++j) {
      cand[k] = cand[j];
      k += std::min(255, static_cast<int>((top - x[cand[j]] - lo) * per2)) == s;
    }
    m = k;
  }
  // the few candidates in the order, walked with the approximate mass before each
  uint64_t* keys = buf.keys.data();
  for (int64_t j = 0; j < m; ++j) keys[j] = order_value(x[cand[j]], cand[j]);
  std::sort(keys, keys + m, std::greater<uint64_t>());
  uint64_t vc = keys[0];
  for (int64_t j = 0; j < m; ++j) {
    const int64_t i = static_cast<int64_t>(0xffffffffu - (keys[j] & 0xffffffffu));
    if (j > 0 && !(base <= limit_h)) break;
    if (w[i] > 0) vc = keys[j];
    base += static_cast<double>(w[i]);
  }
  Exact e = exact_pass(x, w, n, vc, buf);
  double limit = e.z * top_p;
  if (!(e.before <= limit && (e.upto > limit || e.below == 0))) {
    // the smallest order value v with S(v) <= limit, S(v) = the mass of the tokens above v: S never grows with v, and
    // the smallest such v is a token's (the mass changes only at one); invariant S(hi) <= limit < S(lo - 1)
    uint64_t lo = 0, hi = ~uint64_t{0};
    while (lo < hi) {
      const uint64_t mid = lo + (hi - lo) / 2;
      double s = 0.0;
      for (int64_t j = 0; j < n; ++j) s += order_value(x[j], j) > mid ? static_cast<double>(w[j]) : 0.0;
      if (s <= limit) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    vc = lo;
    e = exact_pass(x, w, n, vc, buf);
  }
  const int64_t i = std::upper_bound(cum, cum + n, u * e.upto) - cum;
  if (i < n) return i;  // a running sum repeats over tokens outside the nucleus: the first crossing is inside it
  int64_t last = n - 1;
  while (last > 0 && !(w[last] > 0 && order_value(x[last], last) >= vc)) --last;
  return last;
}

int64_t sample_row(const float* c, const float* un, int64_t vocab, float scale, float t, int64_t top_k, double top_p,
                   double u, int64_t row, Row& buf) {
  float* x = buf.x.data();
  bool nan = false;
  const float top = guide(c, un, vocab, scale, t, x, &nan);
  if (nan) {
    const bool input = std::any_of(c, c + vocab, [](float v) { return v != v; }) ||
                       (un != nullptr && std::any_of(un, un + vocab, [](float v) { return v != v; }));
    TORCH_CHECK_VALUE(!input, "sample_tokens: row ", row, " has NaN logits");
    TORCH_CHECK_VALUE(false, "sample_tokens: row ", row,
                      " has NaN logits after guidance (a logit infinite in both logits and uncond)");
  }
  TORCH_CHECK_VALUE(top != kNegInf, "sample_tokens: row ", row, " has no finite logit");
  TORCH_CHECK_VALUE(top != -kNegInf, "sample_tokens: row ", row, " has an infinite logit (after guidance and temperature)");
  if (top_k == 1) return std::find(x, x + vocab, top) - x;  // the first index of the maximum
  float* w = buf.w.data();
  float* tmp = buf.tmp.data();
  if (top_k > 0 && top_k < vocab) {
    // kept: x >= the k-th largest x (ties kept), listed in index order with their x in tmp and weights in w
    int64_t* sel = buf.sel.data();
    const int64_t kept = top_k_tokens(x, vocab, top_k, buf.bm.data(), tmp, sel, buf.rkeys.data());
    for (int64_t j = 0; j < kept; ++j) tmp[j] = x[sel[j]];
    exp_block(tmp, top, w, kept);
    if (top_p < 1.0) return sel[draw_top_p(tmp, w, kept, top, top_p, u, buf)];
    int64_t n = 0;  // zero weights dropped (never drawn); n >= 1: the maximum weighs 1
    for (int64_t j = 0; j < kept; ++j) tmp[n] = w[j], sel[n] = sel[j], n += w[j] > 0;
    return sel[draw(tmp, n, u)];
  }
  exp_block(x, top, w, vocab);
  if (top_p < 1.0) return draw_top_p(x, w, vocab, top, top_p, u, buf);
  // running sums (sequential, index order) kept, so that the draw is a binary search instead of a second walk: zero
  // weights repeat the sum before them, so the first crossing is at a kept token
  double* cum = buf.cum.data();
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i) cum[i] = total += static_cast<double>(w[i]);
  const int64_t i = std::upper_bound(cum, cum + vocab, u * total) - cum;
  if (i < vocab) return i;
  int64_t last = vocab - 1;
  while (last > 0 && !(w[last] > 0)) --last;
  return last;
}

}  // namespace

at::Tensor sample_tokens_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& uncond, double cfg_scale,
                             double temperature, int64_t top_k, double top_p, int64_t seed, int64_t offset) {
  check_sample_args(logits, uncond, temperature, top_k, top_p);
  const at::Tensor x = logits.contiguous();
  at::Tensor un;
  if (uncond.has_value() && uncond->defined()) {
    un = uncond->contiguous();
  }
  const int64_t rows = x.size(0), vocab = x.size(1);
  at::Tensor out = at::empty({rows}, x.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  const float scale = static_cast<float>(cfg_scale), t = static_cast<float>(temperature);
  const int64_t grain = std::max<int64_t>(1, 16384 / vocab);  // small rows in one thread: no fork for 64 x 64
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sample_tokens_cpu", [&] {
    const scalar_t* lp = x.const_data_ptr<scalar_t>();
    const scalar_t* up = un.defined() ? un.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      const bool use_k = top_k > 1 && top_k < vocab, use_p = top_p < 1 && top_k != 1;
      Row buf{std::vector<float>(vocab),
              std::vector<float>(vocab),
              std::vector<float>(vocab),
              std::vector<float>(use_k ? vocab / 8 + 1 : 0),
              std::vector<double>(vocab),
              std::vector<int64_t>(use_p ? vocab : 0),
              std::vector<int64_t>(use_k ? vocab : 0),
              std::vector<uint16_t>(use_p ? vocab : 0),
              std::vector<uint64_t>(use_p ? vocab : 0),
              std::vector<float>(use_p ? vocab : 0),
              std::vector<float>(use_p ? vocab : 0),
              std::vector<uint32_t>(use_k ? vocab : 0)};
      std::vector<float> cf, uf;  // float copies of a row for the other dtypes
      if constexpr (!std::is_same_v<scalar_t, float>) cf.resize(vocab), uf.resize(up ? vocab : 0);
      for (int64_t r = begin; r < end; ++r) {
        const float* c;
        const float* u = nullptr;
        if constexpr (std::is_same_v<scalar_t, float>) {
          c = reinterpret_cast<const float*>(lp + r * vocab);  // scalar_t is float (no-op cast for the compiler)
          u = up ? reinterpret_cast<const float*>(up + r * vocab) : nullptr;
        } else {
          std::transform(lp + r * vocab, lp + (r + 1) * vocab, cf.begin(), [](scalar_t v) { return static_cast<float>(v); });
          c = cf.data();
          if (up) {
            std::transform(up + r * vocab, up + (r + 1) * vocab, uf.begin(), [](scalar_t v) { return static_cast<float>(v); });
            u = uf.data();
          }
        }
        o[r] = sample_row(c, u, vocab, scale, t, top_k, top_p, uniform(seed, offset, r), r, buf);
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(magvit2, CPU, m) { m.impl("sample_tokens", &sample_tokens_cpu); }

}  // namespace magvit2
