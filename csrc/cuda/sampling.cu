// sample_tokens on CUDA: guidance, temperature, top-k, top-p and a counter-based draw, one block per row, no full sort.
//
// Meant to give, token for token, what csrc/cpu/sampling.cpp and magvit2/ops/reference/sampling.py give, by running
// the same arithmetic (tests/gpu/test_cuda.py compares them on a GPU): every operation that decides a token is in
// namespace `mirror` below (float32 guidance/temperature, float32 exp_det, SplitMix64 uniform) with round-to-nearest
// intrinsics, which nvcc never fuses into FMAs; every sum that decides a token (Z, the top-p mass before a token,
// the draw's running sum, all in index order) is a sequential float64 sum in the reference's order, run by thread 0
// over tiles that the block stages and compacts (zeros skipped: adding +0 changes nothing), so only the order-free
// work is parallel. The top-p rule lives in nucleus(): re-sync it with the CPU kernel when that changes.
//
// Per row (block of 512 threads; scratch x (float) and w (double) rows in global memory):
//   1. x = combine(logits, uncond) / t, NaN checks (inputs, then x: inf - inf in the guidance), max and its first
//      index (block reduction);  top_k == 1 stops here;
//   2. top-k: the k-th largest x by radix select (4 passes of 8-bit digits over order-preserving keys);
//   3. w = exp_det(x - max) in float32 (stored as double), 0 outside the top-k;
//   4. top-p: a mass threshold over keys (x descending, index ascending): a bisection on the key with block-parallel
//      (order-free) sums guesses the cutoff, one sequential pass checks it exactly (a bisection of sequential passes
//      when rounding made the guess wrong), and tokens past it get weight 0; nothing is ordered;
//   5. draw: thread 0 writes the running sum in place of the kept w (index order), then the first index whose running
//      sum exceeds u * sum is a parallel min-reduction.
// Errors (NaN logits, NaN after guidance, no finite or an infinite logit) are flagged per row on the device and raised
// by the host after one synchronising copy of the flags, with the reference's messages and row order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "common/checks.h"

namespace magvit2 {
namespace {

// ---- mirrored arithmetic: keep in sync with csrc/cpu/sampling.cpp and magvit2/ops/reference/sampling.py ----------
namespace mirror {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull, kMix1 = 0xBF58476D1CE4E5B9ull, kMix2 = 0x94D049BB133111EBull;
// The reference's float32 constants as exact hex literals (each its Python float rounded to nearest, checked below):
// Cody-Waite ln 2 split hi/lo, 1/ln 2, the cutoff, and the Cephes expf polynomial (EXP_COEFFS).
constexpr float kInvLn2 = 0x1.715476p+0f, kLn2Hi = 0x1.63p-1f, kLn2Lo = -0x1.bd0106p-13f;
constexpr float kExpCutoff = -87.0f;  // exp(-87) > 2^-126: every weight kept and every 2^n is a normal float
constexpr float kC0 = 0x1.a0d2cep-13f, kC1 = 0x1.6e879cp-10f, kC2 = 0x1.111210p-7f, kC3 = 0x1.555382p-5f,
                kC4 = 0x1.555554p-3f, kC5 = 0x1.000000p-1f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: y + kRound - kRound rounds y half-to-even (|y| < 2^22)
static_assert(kInvLn2 == static_cast<float>(1.44269504088896341) && kLn2Hi == static_cast<float>(0.693359375) &&
                  kLn2Lo == static_cast<float>(-2.12194440e-4),
              "ln 2 constants: sampling_reference.INV_LN2, LN2_HI, LN2_LO as float32");
static_assert(kC0 == static_cast<float>(1.9875691500e-4) && kC1 == static_cast<float>(1.3981999507e-3) &&
                  kC2 == static_cast<float>(8.3334519073e-3) && kC3 == static_cast<float>(4.1665795894e-2) &&
                  kC4 == static_cast<float>(1.6666665459e-1) && kC5 == static_cast<float>(5.0000001201e-1),
              "polynomial: sampling_reference.EXP_COEFFS as float32");

// 53-bit uniform in [0, 1) for (seed, offset, row): SplitMix64 finaliser of a 64-bit key.
__device__ __forceinline__ double uniform(int64_t seed, int64_t offset, int64_t row) {
  uint64_t z = (static_cast<uint64_t>(seed) * kGolden) ^
               (static_cast<uint64_t>(offset) * kMix1 + static_cast<uint64_t>(row));
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  z ^= z >> 31;
  return __dmul_rn(static_cast<double>(z >> 11), 0x1.0p-53);
}

// Guidance then temperature in float32, each operation rounded on its own: (u + (c - u) * s) / t.
__device__ __forceinline__ float guided(float c, float u, float s) {
  return __fadd_rn(u, __fmul_rn(__fsub_rn(c, u), s));
}
__device__ __forceinline__ float tempered(float v, float t) { return __fdiv_rn(v, t); }

// exp(d) for float32 d = x_i - max <= 0 (-inf included), 0 below the cutoff: clamp to the cutoff (no lane meets an
// infinity), magic-number rounding, Cody-Waite reduction, exp(r) = 1 + r + r^2 * P(r) by Horner, 2^n built from
// bits; sampling_reference.exp_det (and the CPU's exp_block) operation for operation.
__device__ __forceinline__ float exp_det(float d) {
  const float dc = d < kExpCutoff ? kExpCutoff : d;
  const float n = __fsub_rn(__fadd_rn(__fmul_rn(dc, kInvLn2), kRound), kRound);  // n in [-126, 0]
  const float r = __fsub_rn(__fsub_rn(dc, __fmul_rn(n, kLn2Hi)), __fmul_rn(n, kLn2Lo));
  float p = kC0;
  p = __fadd_rn(__fmul_rn(p, r), kC1);
  p = __fadd_rn(__fmul_rn(p, r), kC2);
  p = __fadd_rn(__fmul_rn(p, r), kC3);
  p = __fadd_rn(__fmul_rn(p, r), kC4);
  p = __fadd_rn(__fmul_rn(p, r), kC5);
  p = __fadd_rn(__fmul_rn(p, __fmul_rn(r, r)), r);
  p = __fadd_rn(p, 1.0f);
  const float scale = __int_as_float((static_cast<int>(n) + 127) << 23);  // 2^n, exact
  return d < kExpCutoff ? 0.0f : __fmul_rn(p, scale);
}

// Top-p limit p * Z, the draw's target u * sum, and the sequential sums' step.
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }

}  // namespace mirror

// ---- order-free helpers -------------------------------------------------------------------------------------------

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr uint64_t kNoKey = ~uint64_t(0);

enum Status : int32_t { kOk = 0, kNaN = 1, kNoFinite = 2, kInfinite = 3, kNaNAfterGuidance = 4 };

struct Shared {
  double vals[kThreads];  // ordered scans: a compacted tile of weights
  double red_sum[kWarps];
  int32_t tile_index[kThreads];
  unsigned hist[256];
  unsigned warp_count[kWarps], warp_offset[kWarps];
  float red_value[kWarps];
  int64_t red_index[kWarps];
  unsigned long long first, last;
  uint64_t select_prefix;
  double target, limit;
  unsigned select_rank, tile_count;
  int stop;
};

// Descending order of x as an ascending unsigned key: larger x -> smaller key; -0 and +0 share a key (they compare
// equal, and the CPU orders equal x by index).
__device__ __forceinline__ uint32_t descending_key(float v) {
  uint32_t u = __float_as_uint(v);
  u = u == 0x80000000u ? 0u : u;
  const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~ascending;
}

__device__ __forceinline__ float from_descending_key(uint32_t key) {
  const uint32_t ascending = ~key;
  return __uint_as_float((ascending & 0x80000000u) ? (ascending & 0x7fffffffu) : ~ascending);
}

// The rank-th smallest (1-based) of the candidates' keys; `key(i, &k)` says whether token i is a candidate and sets
// its key, of `bits` significant bits. One histogram pass over the row per 8-bit digit, most significant first.
template <typename KeyFn>
__device__ uint64_t radix_select(int64_t vocab, int bits, unsigned rank, const KeyFn& key, Shared& sh) {
  const int lane = threadIdx.x & 31;
  uint64_t prefix = 0, mask = 0;
  for (int shift = (bits + 7) / 8 * 8 - 8; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) sh.hist[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      uint64_t k;
      if (key(i, k) && (k & mask) == prefix) atomicAdd(&sh.hist[(k >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // lane l owns bins 8l .. 8l + 7: an inclusive scan over lanes finds the rank's bin
      unsigned own = 0;
      for (int j = 0; j < 8; ++j) own += sh.hist[8 * lane + j];
      unsigned inclusive = own;
      for (int off = 1; off < 32; off <<= 1) {
        const unsigned up = __shfl_up_sync(kFull, inclusive, off);
        if (lane >= off) inclusive += up;
      }
      const unsigned before = inclusive - own;
      if (before < rank && rank <= inclusive) {
        unsigned below = before;
        int b = 8 * lane;
        while (below + sh.hist[b] < rank) below += sh.hist[b++];
        sh.select_prefix = prefix | (static_cast<uint64_t>(b) << shift);
        sh.select_rank = rank - below;
      }
    }
    __syncthreads();
    prefix = sh.select_prefix;
    rank = sh.select_rank;
    mask |= uint64_t(255) << shift;
  }
  return prefix;
}

// Calls visit(i, w[i]) on thread 0 for every i with w[i] != 0 (NaN included), in index order: the block stages a tile
// of the row, compacts its nonzero entries in order (ballots + a scan over warps), thread 0 runs over them.
template <typename Visit>
__device__ void ordered_visit(const double* w, int64_t vocab, Shared& sh, Visit& visit) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  for (int64_t base = 0; base < vocab; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const double v = i < vocab ? w[i] : 0.0;
    const bool nonzero = v != 0.0;
    const unsigned ballot = __ballot_sync(kFull, nonzero);
    if (lane == 0) sh.warp_count[warp] = __popc(ballot);
    __syncthreads();
    if (threadIdx.x < 32) {
      const unsigned own = lane < kWarps ? sh.warp_count[lane] : 0u;
      unsigned inclusive = own;
      for (int off = 1; off < 32; off <<= 1) {
        const unsigned up = __shfl_up_sync(kFull, inclusive, off);
        if (lane >= off) inclusive += up;
      }
      if (lane < kWarps) sh.warp_offset[lane] = inclusive - own;
      if (lane == 31) sh.tile_count = inclusive;
    }
    __syncthreads();
    if (nonzero) {
      const unsigned pos = sh.warp_offset[warp] + __popc(ballot & ((1u << lane) - 1u));
      sh.vals[pos] = v;
      sh.tile_index[pos] = static_cast<int32_t>(i);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (unsigned j = 0; j < sh.tile_count; ++j) visit(sh.tile_index[j], sh.vals[j]);
    }
    __syncthreads();
  }
}

// The sum of every thread's v (any order: only an estimate); every thread gets the same value.
__device__ double block_sum(double v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(kFull, v, off);
  if (lane == 0) sh.red_sum[warp] = v;
  __syncthreads();
  double total = 0.0;
  for (int j = 0; j < kWarps; ++j) total += sh.red_sum[j];
  __syncthreads();
  return total;
}

// ---- the row steps that follow the reference's order of decisions ------------------------------------------------

// Top-p (reference: kept token i stays iff M(i) <= limit, M(i) = the mass of the kept tokens before i in the order
// x descending, ties lower index first, summed sequentially in index order): zeroes w outside the nucleus. With
// key = (descending x, index) and S(K) = the mass of the tokens of key < K, S never decreases in K, so the nucleus
// is the tokens of key <= K*, K* the largest K with S(K) <= limit. A bisection on K with block sums (order-free,
// parallel) finds K* up to rounding; one sequential pass checks S(K) <= limit < S(K + 1) exactly; if rounding made
// the guess wrong (S within ~1e-13 of the limit), a bisection of sequential passes finds K*. limit: sh.limit.
__device__ void nucleus(const float* x, double* w, int64_t vocab, int index_bits, Shared& sh) {
  auto key_of = [&](int64_t i) { return (static_cast<uint64_t>(descending_key(x[i])) << index_bits) | i; };
  const uint64_t last_key = (uint64_t(1) << (32 + index_bits)) - 1;
  const double limit = sh.limit;
  uint64_t lo = 0, hi = last_key;  // S(0) = 0 <= limit
  while (lo < hi) {
    const uint64_t mid = lo + (hi - lo) / 2 + 1;
    double part = 0.0;
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) part += w[i] > 0.0 && key_of(i) < mid ? w[i] : 0.0;
    if (block_sum(part, sh) <= limit) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  double below = 0.0, upto = 0.0;  // thread 0: S(lo), S(lo + 1)
  auto check = [&](int32_t i, double v) {
    const uint64_t k = key_of(i);
    if (k < lo) below = mirror::add(below, v);
    if (k <= lo) upto = mirror::add(upto, v);
  };
  ordered_visit(w, vocab, sh, check);
  if (threadIdx.x == 0) sh.stop = below <= limit && (lo == last_key || upto > limit);
  __syncthreads();
  if (!sh.stop) {
    uint64_t a = 0, b = last_key;
    while (a < b) {
      const uint64_t mid = a + (b - a) / 2 + 1;
      double s = 0.0;
      auto mass = [&](int32_t i, double v) {
        if (key_of(i) < mid) s = mirror::add(s, v);
      };
      __syncthreads();  // every thread has read sh.stop
      ordered_visit(w, vocab, sh, mass);
      if (threadIdx.x == 0) sh.stop = s <= limit;
      __syncthreads();
      if (sh.stop) {
        a = mid;
      } else {
        b = mid - 1;
      }
    }
    lo = a;
  }
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    if (w[i] > 0.0 && key_of(i) > lo) w[i] = 0.0;
  }
  __syncthreads();
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sample_kernel(const scalar_t* __restrict__ logits, const scalar_t* __restrict__ uncond, int64_t vocab,
                  int index_bits, float scale, float temperature, int64_t top_k, double top_p, int64_t seed,
                  int64_t offset, float* __restrict__ xs, double* __restrict__ ws, int64_t* __restrict__ out,
                  int32_t* __restrict__ status) {
  __shared__ Shared sh;
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const scalar_t* lr = logits + row * vocab;
  const scalar_t* ur = uncond != nullptr ? uncond + row * vocab : nullptr;
  float* x = xs + row * vocab;
  double* w = ws + row * vocab;

  // 1. guidance + temperature, NaN checks, max with its first index (the CPU's `v > top` scan).
  constexpr float kInf = std::numeric_limits<float>::infinity();
  float top = -kInf;
  int64_t argmax = 0;
  bool nan = false, nan_x = false;  // a NaN input; a NaN x (inf - inf in the guidance)
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float c = static_cast<float>(lr[i]);
    float v = c;
    nan |= isnan(c);
    if (ur != nullptr) {
      const float u = static_cast<float>(ur[i]);
      nan |= isnan(u);
      v = mirror::guided(c, u, scale);
    }
    v = mirror::tempered(v, temperature);
    nan_x |= isnan(v);
    x[i] = v;
    if (v > top) top = v, argmax = i;
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float t2 = __shfl_down_sync(kFull, top, off);
    const int64_t a2 = __shfl_down_sync(kFull, argmax, off);
    if (t2 > top || (t2 == top && a2 < argmax)) top = t2, argmax = a2;
  }
  if (lane == 0) sh.red_value[warp] = top, sh.red_index[warp] = argmax;
  nan = __syncthreads_or(nan);
  nan_x = __syncthreads_or(nan_x);
  top = sh.red_value[0];
  argmax = sh.red_index[0];
  for (int j = 1; j < kWarps; ++j) {
    if (sh.red_value[j] > top || (sh.red_value[j] == top && sh.red_index[j] < argmax)) {
      top = sh.red_value[j], argmax = sh.red_index[j];
    }
  }
  const int32_t error = nan ? kNaN
                        : nan_x ? kNaNAfterGuidance
                        : top == -kInf ? kNoFinite
                        : top == kInf ? kInfinite
                        : kOk;
  if (error != kOk || top_k == 1) {
    if (threadIdx.x == 0) {
      status[row] = error;
      out[row] = argmax;
    }
    return;
  }

  // 2. top-k: the k-th largest x; tokens below it get weight 0 (ties at the threshold are kept).
  const bool filter_k = top_k > 0 && top_k < vocab;
  float threshold = -kInf;
  if (filter_k) {
    auto key = [&](int64_t i, uint64_t& k) {
      k = descending_key(x[i]);
      return true;
    };
    const uint64_t kth = radix_select(vocab, 32, static_cast<unsigned>(top_k), key, sh);
    threshold = from_descending_key(static_cast<uint32_t>(kth));
  }

  // 3. weights: float32 exp of the float32 x - max, summed in float64 from here on.
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    double v = static_cast<double>(mirror::exp_det(__fsub_rn(x[i], top)));
    if (filter_k && !(x[i] >= threshold)) v = 0.0;
    w[i] = v;
  }

  // 4. top-p over Z = the sequential sum of w in index order.
  if (top_p < 1.0) {
    double total = 0.0;
    auto add_total = [&](int32_t, double v) { total = mirror::add(total, v); };
    ordered_visit(w, vocab, sh, add_total);
    if (threadIdx.x == 0) sh.limit = mirror::mul(total, top_p);  // total is thread 0's
    __syncthreads();
    nucleus(x, w, vocab, index_bits, sh);
  }

  // 5. draw: the running sum of the kept weights (all > 0: finite x, no NaN) replaces them (thread 0, index order),
  //    then the first index whose running sum exceeds u * sum; none (u * sum rounded up to sum) -> the last kept
  //    index, as the reference.
  double sum = 0.0;
  auto running = [&](int32_t i, double v) {
    sum = mirror::add(sum, v);
    w[i] = sum;
  };
  ordered_visit(w, vocab, sh, running);
  if (threadIdx.x == 0) {
    sh.target = mirror::mul(mirror::uniform(seed, offset, row), sum);
    sh.first = ~0ull;
    sh.last = 0;
  }
  __syncthreads();
  const double target = sh.target;
  unsigned long long first = ~0ull, last = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const double c = w[i];
    if (c > 0.0) {
      last = i;
      if (c > target && first == ~0ull) first = i;
    }
  }
  if (first != ~0ull) atomicMin(&sh.first, first);
  if (last != 0) atomicMax(&sh.last, last);
  __syncthreads();
  if (threadIdx.x == 0) {
    status[row] = kOk;
    out[row] = static_cast<int64_t>(sh.first != ~0ull ? sh.first : sh.last);
  }
}

}  // namespace

at::Tensor sample_tokens_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& uncond, double cfg_scale,
                              double temperature, int64_t top_k, double top_p, int64_t seed, int64_t offset) {
  check_sample_args(logits, uncond, temperature, top_k, top_p);
  TORCH_CHECK_VALUE(logits.size(1) <= std::numeric_limits<int32_t>::max(),
                    "sample_tokens: logits must have a vocabulary < 2^31 on CUDA, got ", logits.sizes());
  const at::Tensor x = logits.contiguous();
  at::Tensor un;
  if (uncond.has_value() && uncond->defined()) {
    TORCH_CHECK_VALUE(uncond->device() == logits.device(), "sample_tokens: uncond must be on logits' device ",
                      logits.device(), ", got ", uncond->device());
    un = uncond->contiguous();
  }
  const int64_t rows = x.size(0), vocab = x.size(1);
  at::Tensor out = at::empty({rows}, x.options().dtype(at::kLong));
  if (rows == 0) {
    return out;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor xs = at::empty({rows, vocab}, x.options().dtype(at::kFloat));
  at::Tensor ws = at::empty({rows, vocab}, x.options().dtype(at::kDouble));
  at::Tensor status = at::empty({rows}, x.options().dtype(at::kInt));
  int index_bits = 1;
  while ((int64_t(1) << index_bits) < vocab) ++index_bits;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sample_tokens_cuda", [&] {
    sample_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), un.defined() ? un.const_data_ptr<scalar_t>() : nullptr, vocab, index_bits,
        static_cast<float>(cfg_scale), static_cast<float>(temperature), top_k, top_p, seed, offset,
        xs.mutable_data_ptr<float>(), ws.mutable_data_ptr<double>(), out.mutable_data_ptr<int64_t>(),
        status.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // The value errors need the rows' flags on the host: one small synchronising copy, reported in the reference's
  // order (the first row with a NaN input, else the first NaN after guidance, else the first row without a finite
  // logit, else the first with an infinite one).
  const at::Tensor flags = status.cpu();
  const int32_t* f = flags.const_data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK_VALUE(f[r] != kNaN, "sample_tokens: row ", r, " has NaN logits");
  }
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK_VALUE(f[r] != kNaNAfterGuidance, "sample_tokens: row ", r,
                      " has NaN logits after guidance (a logit infinite in both logits and uncond)");
  }
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK_VALUE(f[r] != kNoFinite, "sample_tokens: row ", r, " has no finite logit");
  }
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK_VALUE(f[r] != kInfinite, "sample_tokens: row ", r,
                      " has an infinite logit (after guidance and temperature)");
  }
  return out;
}

TORCH_LIBRARY_IMPL(magvit2, CUDA, m) { m.impl("sample_tokens", &sample_tokens_cuda); }

}  // namespace magvit2
