// Exact LFQ entropy over the full 2^K codebook on CUDA, forward and hand-written backward (csrc/cpu/entropy.cpp is
// the CPU twin; docs: shared exact-entropy note, magvit2/ops/reference/lfq.py).
//
// p(c | z) = prod_i q_i(c_i), q_i(1) = sigmoid(4 t z_i). Per chunk of tokens:
//   build_kernel    one block per 8 tokens: the K sigmoids and binary entropies of each token (shared memory), the
//                   token's entropy sum, and its rows of P_A (2^Ka) and P_B (2^Kb), each entry a product of the group's
//                   bit probabilities in bit order (the CPU's doubling gives the same product sequence);
//   cuBLAS          avg += P_A^T P_B (forward); dP_A = P_B dAvg^T, dP_B = P_A dAvg (backward), through at::mm;
//   grad_kernel     one warp per token: the per-bit sums of dP * P over the group's indices with bit i set (lanes
//                   stride the 2^Ka entries, one shuffle reduction per bit), then lane i writes dL/dz_i.
// Nothing of size N x 2^Ka outlives a chunk: memory is O(chunk x 2^Ka + 2^K). No host synchronisation: the incoming
// scalar gradients stay on the device (the CPU kernel reads them on the host to skip the codebook term when it is 0;
// here the term is always computed, and a zero grad_codebook gives exactly zero through the same guard).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common/checks.h"

namespace magvit2 {
namespace {

constexpr int kBuildThreads = 256;
constexpr int kBuildRows = 8;
constexpr int kGradWarps = 8;
constexpr int kMaxGroupBits = (kMaxEntropyBits + 1) / 2;
// P_A + P_B entries per chunk: 2^24 floats = 64 MiB (16384 tokens at K = 18), enough rows for cuBLAS to run at full
// speed; the backward holds two such pairs.
constexpr int64_t kChunkEntries = int64_t(1) << 24;

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
// Smallest normal number: where the eps = 0 slope clamps avg.
__device__ __forceinline__ float tiny_(float) { return FLT_MIN; }
__device__ __forceinline__ double tiny_(double) { return DBL_MIN; }

template <typename T>
struct BitProbs {
  T q1, q0, entropy;
};

// q1 = sigmoid(x), q0 = sigmoid(-x), H_b(q1) = log1p(e) + |x| e / (1 + e) from one e = exp(-|x|), as the CPU kernel.
template <typename T>
__device__ __forceinline__ BitProbs<T> bit_probs(T x) {
  const T a = x < T(0) ? -x : x;
  const T e = exp_(-a);
  const T big = T(1) / (T(1) + e), small = e * big;
  const T entropy = log1p_(e) + (e > T(0) ? a * small : T(0));
  return x >= T(0) ? BitProbs<T>{big, small, entropy} : BitProbs<T>{small, big, entropy};
}

// Product of the group's bit probabilities for index a, bit 0 first.
template <typename T>
__device__ __forceinline__ T index_prob(const T* q0, const T* q1, int bits, int64_t a) {
  T p = T(1);
  for (int i = 0; i < bits; ++i) {
    p *= ((a >> i) & 1) ? q1[i] : q0[i];
  }
  return p;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBuildThreads)
    build_kernel(const scalar_t* __restrict__ z, int64_t s0, int64_t s1, int64_t c0, int64_t rows, int k, int ka,
                 acc_t scale, acc_t* __restrict__ pa, acc_t* __restrict__ pb, acc_t* __restrict__ h) {
  __shared__ acc_t q0[kBuildRows][kMaxEntropyBits], q1[kBuildRows][kMaxEntropyBits], ent[kBuildRows][kMaxEntropyBits];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBuildRows;
  const int tile = rows - r0 < kBuildRows ? static_cast<int>(rows - r0) : kBuildRows;
  for (int t = threadIdx.x; t < tile * k; t += blockDim.x) {
    const int r = t / k, i = t % k;
    const acc_t x = scale * static_cast<acc_t>(z[(c0 + r0 + r) * s0 + i * s1]);
    const BitProbs<acc_t> q = bit_probs(x);
    q1[r][i] = q.q1;
    q0[r][i] = q.q0;
    ent[r][i] = q.entropy;
  }
  __syncthreads();
  if (h != nullptr && threadIdx.x < tile) {
    acc_t entropy = 0;  // bit order, as the CPU kernel
    for (int i = 0; i < k; ++i) {
      entropy += ent[threadIdx.x][i];
    }
    h[r0 + threadIdx.x] = entropy;
  }
  const int kb = k - ka;
  const int64_t wa = int64_t(1) << ka, wb = int64_t(1) << kb;
  for (int r = 0; r < tile; ++r) {
    acc_t* row_a = pa + (r0 + r) * wa;
    acc_t* row_b = pb + (r0 + r) * wb;
    for (int64_t a = threadIdx.x; a < wa; a += blockDim.x) {
      row_a[a] = index_prob(q0[r], q1[r], ka, a);
    }
    for (int64_t b = threadIdx.x; b < wb; b += blockDim.x) {
      row_b[b] = index_prob(q0[r] + ka, q1[r] + ka, kb, b);
    }
  }
}

// sum[i] = sum over the indices a with bit i set of g[a] p[a] (i < bits), total = the sum over all a; every lane of
// the warp gets every sum.
template <typename T>
__device__ __forceinline__ T warp_bit_sums(const T* __restrict__ g, const T* __restrict__ p, int bits,
                                           T (&sum)[kMaxGroupBits]) {
  const int lane = threadIdx.x & 31;
  T total = 0;
#pragma unroll
  for (int i = 0; i < kMaxGroupBits; ++i) {
    sum[i] = 0;
  }
  const int64_t width = int64_t(1) << bits;
  for (int64_t a = lane; a < width; a += 32) {
    const T v = g[a] * p[a];
    total += v;
#pragma unroll
    for (int i = 0; i < kMaxGroupBits; ++i) {
      if (i < bits && ((a >> i) & 1)) {
        sum[i] += v;
      }
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    total += __shfl_xor_sync(0xffffffffu, total, off);
#pragma unroll
    for (int i = 0; i < kMaxGroupBits; ++i) {
      sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], off);
    }
  }
  return total;
}

template <typename T>
__device__ __forceinline__ T pick(const T (&sum)[kMaxGroupBits], int i) {
  T v = 0;
#pragma unroll
  for (int j = 0; j < kMaxGroupBits; ++j) {
    v = j == i ? sum[j] : v;
  }
  return v;
}

// One warp per token: dL/dz_i = 4t [g_ps (-x q1 q0) + d1_i q0 - d0_i q1], d1/d0 the bit sums of dP_A P_A (or B).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kGradWarps * 32)
    grad_kernel(const scalar_t* __restrict__ z, int64_t s0, int64_t s1, int64_t c0, int64_t rows, int k, int ka,
                acc_t scale, const acc_t* __restrict__ g_ps, const acc_t* __restrict__ pa,
                const acc_t* __restrict__ pb, const acc_t* __restrict__ ga, const acc_t* __restrict__ gb,
                scalar_t* __restrict__ grad) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kGradWarps + threadIdx.x / 32;
  if (row >= rows) {
    return;
  }
  const int lane = threadIdx.x & 31, kb = k - ka;
  const int64_t wa = int64_t(1) << ka, wb = int64_t(1) << kb;
  acc_t sum_a[kMaxGroupBits], sum_b[kMaxGroupBits];
  const acc_t total_a = warp_bit_sums(ga + row * wa, pa + row * wa, ka, sum_a);
  const acc_t total_b = warp_bit_sums(gb + row * wb, pb + row * wb, kb, sum_b);
  const acc_t gps = *g_ps;
  for (int i = lane; i < k; i += 32) {
    const acc_t x = scale * static_cast<acc_t>(z[(c0 + row) * s0 + i * s1]);
    const BitProbs<acc_t> q = bit_probs(x);
    const acc_t w = q.q1 * q.q0;
    // d H_b / dx = -x s (1 - s): 0 at |x| = inf (w = 0), NaN stays NaN.
    acc_t g = gps * scale * (w == acc_t(0) ? acc_t(0) : -x * w);
    const acc_t one = i < ka ? pick(sum_a, i) : pick(sum_b, i - ka);
    const acc_t zero = (i < ka ? total_a : total_b) - one;
    g += scale * (one * q.q0 - zero * q.q1);
    grad[(c0 + row) * k + i] = static_cast<scalar_t>(g);
  }
}

// term[j] = -avg log(avg + eps) in double (0 log 0 = 0), summed afterwards by a deterministic torch reduction.
template <typename acc_t>
__global__ void entropy_terms_kernel(const acc_t* __restrict__ avg, int64_t count, double eps,
                                     double* __restrict__ term) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = static_cast<double>(avg[j]);
    term[j] = v == 0.0 ? 0.0 : -(v * log(v + eps));
  }
}

// d_avg = scale x (g_cb x d/d avg [-sum avg log(avg + eps)] + grad_avg), the CPU kernel's expression; g_cb is read
// on the device.
template <typename acc_t>
__global__ void codebook_grad_kernel(const acc_t* __restrict__ avg, int64_t count, acc_t eps,
                                     const acc_t* __restrict__ g_cb, const acc_t* __restrict__ extra, acc_t scale,
                                     acc_t* __restrict__ d_avg) {
  const acc_t tiny = tiny_(acc_t(0));
  const acc_t gc = *g_cb;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t v = avg[j];
    const acc_t slope = eps == acc_t(0) ? log_(v > tiny ? v : tiny) + acc_t(1) : log_(v + eps) + v / (v + eps);
    d_avg[j] = scale * ((gc == acc_t(0) ? acc_t(0) : -gc * slope) + (extra != nullptr ? extra[j] : acc_t(0)));
  }
}

unsigned grid_for(int64_t count, int threads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((count + threads - 1) / threads, 1 << 16)));
}

int64_t chunk_rows(int64_t n, int64_t wa, int64_t wb) {
  return std::max<int64_t>(1, std::min<int64_t>(n, std::max<int64_t>(1024, kChunkEntries / (wa + wb))));
}

template <typename scalar_t, typename acc_t>
void launch_build(const at::Tensor& z, int64_t c0, int64_t rows, int ka, acc_t scale, at::Tensor& pa, at::Tensor& pb,
                  acc_t* h, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((rows + kBuildRows - 1) / kBuildRows);
  build_kernel<scalar_t, acc_t><<<blocks, kBuildThreads, 0, stream>>>(
      z.const_data_ptr<scalar_t>(), z.stride(0), z.stride(1), c0, rows, static_cast<int>(z.size(1)), ka, scale,
      pa.mutable_data_ptr<acc_t>(), pb.mutable_data_ptr<acc_t>(), h);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor codebook_entropy(const at::Tensor& avg, double eps, cudaStream_t stream) {
  at::Tensor term = at::empty({avg.numel()}, avg.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(avg.scalar_type(), "codebook_entropy_cuda", [&] {
    entropy_terms_kernel<scalar_t><<<grid_for(avg.numel(), 256), 256, 0, stream>>>(
        avg.const_data_ptr<scalar_t>(), avg.numel(), eps, term.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return term.sum();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lfq_entropy_cuda(const at::Tensor& z, double inv_temperature,
                                                                double eps) {
  check_entropy_args("lfq_entropy", z, inv_temperature, eps);
  const c10::cuda::CUDAGuard guard(z.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = z.size(0), k = z.size(1);
  const int64_t ka = (k + 1) / 2, kb = k / 2, wa = int64_t(1) << ka, wb = int64_t(1) << kb;
  const at::TensorOptions opts = z.options().dtype(opmath(z.scalar_type()));
  const int64_t chunk = chunk_rows(n, wa, wb);
  at::Tensor h = at::empty({chunk}, opts), pa = at::empty({chunk, wa}, opts), pb = at::empty({chunk, wb}, opts);
  at::Tensor avg = at::zeros({wa, wb}, opts);
  at::Tensor entropy_sum = at::zeros({}, opts.dtype(at::kDouble));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "lfq_entropy_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(4.0 * inv_temperature);
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
      const int64_t rows = std::min(chunk, n - c0);
      launch_build<scalar_t, acc_t>(z, c0, rows, static_cast<int>(ka), scale, pa, pb, h.mutable_data_ptr<acc_t>(),
                                    stream);
      entropy_sum.add_(h.narrow(0, 0, rows).sum(0, /*keepdim=*/false, at::kDouble));
      // avg += P_A^T P_B over the chunk: (2^Ka, rows) @ (rows, 2^Kb), one cuBLAS GEMM.
      avg.addmm_(pa.narrow(0, 0, rows).t(), pb.narrow(0, 0, rows));
    }
  });

  const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(n, 1));
  avg.mul_(inv_n);
  at::Tensor per_sample = entropy_sum.mul_(inv_n).to(opts.dtype());
  at::Tensor codebook = codebook_entropy(avg, eps, stream).to(opts.dtype());
  return {per_sample, codebook, avg};
}

at::Tensor lfq_entropy_backward_cuda(const at::Tensor& grad_per_sample, const at::Tensor& grad_codebook,
                                     const std::optional<at::Tensor>& grad_avg, const at::Tensor& z,
                                     const at::Tensor& avg, double inv_temperature, double eps) {
  check_entropy_args("lfq_entropy_backward", z, inv_temperature, eps);
  const int64_t n = z.size(0), k = z.size(1);
  const int64_t ka = (k + 1) / 2, kb = k / 2, wa = int64_t(1) << ka, wb = int64_t(1) << kb;
  const at::ScalarType acc = opmath(z.scalar_type());
  const at::TensorOptions opts = z.options().dtype(acc);
  check_entropy_backward_args(z, avg, grad_per_sample, grad_codebook);
  TORCH_CHECK(avg.device() == z.device(), "lfq_entropy_backward: avg must be on z's device ", z.device(), ", got ",
              avg.device());
  const bool has_avg_grad = grad_avg.has_value() && grad_avg->defined();
  if (has_avg_grad) {
    TORCH_CHECK(grad_avg->numel() == wa * wb, "lfq_entropy_backward: grad_avg must have the shape of avg (", wa,
                ", ", wb, "), got ", grad_avg->sizes());
  }
  const c10::cuda::CUDAGuard guard(z.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor grad = at::empty({n, k}, z.options());
  if (n == 0) {
    return grad;
  }
  const double inv_n = 1.0 / static_cast<double>(n);
  // The scalar gradients stay on the device (no .item() sync): g_ps = grad_per_sample / N, g_cb as given.
  const at::Tensor g_ps = (grad_per_sample.reshape({}).to(opts.dtype(at::kDouble)) * inv_n).to(acc);
  const at::Tensor g_cb = grad_codebook.reshape({}).to(opts);
  const at::Tensor extra = has_avg_grad ? grad_avg->to(opts).contiguous() : at::Tensor();
  const at::Tensor avg_c = avg.contiguous();
  at::Tensor d_avg = at::empty({wa, wb}, opts);

  const int64_t chunk = chunk_rows(n, wa, wb);
  at::Tensor pa = at::empty({chunk, wa}, opts), pb = at::empty({chunk, wb}, opts);
  at::Tensor ga = at::empty({chunk, wa}, opts), gb = at::empty({chunk, wb}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "lfq_entropy_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(4.0 * inv_temperature);
    codebook_grad_kernel<acc_t><<<grid_for(wa * wb, 256), 256, 0, stream>>>(
        avg_c.const_data_ptr<acc_t>(), wa * wb, static_cast<acc_t>(eps), g_cb.const_data_ptr<acc_t>(),
        extra.defined() ? extra.const_data_ptr<acc_t>() : nullptr, static_cast<acc_t>(inv_n),
        d_avg.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
      const int64_t rows = std::min(chunk, n - c0);
      launch_build<scalar_t, acc_t>(z, c0, rows, static_cast<int>(ka), scale, pa, pb, nullptr, stream);
      // dL/dP_A = P_B dAvg^T and dL/dP_B = P_A dAvg over the chunk: two cuBLAS GEMMs.
      at::Tensor ga_rows = ga.narrow(0, 0, rows), gb_rows = gb.narrow(0, 0, rows);
      at::mm_out(ga_rows, pb.narrow(0, 0, rows), d_avg.t());
      at::mm_out(gb_rows, pa.narrow(0, 0, rows), d_avg);
      const unsigned blocks = static_cast<unsigned>((rows + kGradWarps - 1) / kGradWarps);
      grad_kernel<scalar_t, acc_t><<<blocks, kGradWarps * 32, 0, stream>>>(
          z.const_data_ptr<scalar_t>(), z.stride(0), z.stride(1), c0, rows, static_cast<int>(k),
          static_cast<int>(ka), scale, g_ps.const_data_ptr<acc_t>(), pa.const_data_ptr<acc_t>(),
          pb.const_data_ptr<acc_t>(), ga.const_data_ptr<acc_t>(), gb.const_data_ptr<acc_t>(),
          grad.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return grad;
}

TORCH_LIBRARY_IMPL(magvit2, CUDA, m) {
  m.impl("lfq_entropy", &lfq_entropy_cuda);
  m.impl("lfq_entropy_backward", &lfq_entropy_backward_cuda);
}

}  // namespace magvit2
