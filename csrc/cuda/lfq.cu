// lfq_quantize on CUDA: codes = sign with 0 -> -1, and LSB-first int64 indices per bit group, in one kernel.
//
// Same bit-pattern test as csrc/cpu/lfq.cpp (z > 0 <=> u - 1 < bits(+inf) on the unsigned raw value: +0 wraps to the
// top, negatives and NaN sit above +inf), so codes and indices are bit-identical to the CPU kernel for float16,
// bfloat16, float32 and float64, any strides.
//
// Grid: one thread per (group, row), rows fastest, so the index stores of a warp are 32 consecutive int64 of one
// group row (coalesced); each thread reads its group's channels of one row, writes their codes and the group index.
// z is read once. The group table travels in the kernel parameters; more than kGroupsPerLaunch groups take several
// launches over disjoint channel ranges.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/checks.h"
#include "common/raw_bits.h"

namespace magvit2 {
namespace {


constexpr int kThreads = 256;
constexpr int kGroupsPerLaunch = 64;

// Groups [first, first + count) of one launch: channel offset (absolute) and bit count of each.
struct GroupTable {
  int32_t offset[kGroupsPerLaunch];
  int32_t bits[kGroupsPerLaunch];
  int32_t first, count;
};

template <typename raw_t, raw_t kInf, raw_t kOne, raw_t kMinusOne>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const raw_t* __restrict__ z, int64_t s0, int64_t s1, int64_t n, int64_t k, GroupTable table,
                    raw_t* __restrict__ codes, int64_t* __restrict__ indices) {
  const int64_t total = n * table.count;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = t % n;
    const int g = static_cast<int>(t / n);
    const int64_t c0 = table.offset[g];
    const int bits = table.bits[g];
    const raw_t* in = z + row * s0 + c0 * s1;
    raw_t* out = codes + row * k + c0;
    uint64_t index = 0;
    for (int j = 0; j < bits; ++j) {
      const bool p = positive<raw_t, kInf>(in[j * s1]);
      out[j] = p ? kOne : kMinusOne;
      index |= static_cast<uint64_t>(p) << j;
    }
    indices[(table.first + g) * n + row] = static_cast<int64_t>(index);
  }
}

template <typename scalar_t>
void launch_quantize(const at::Tensor& z, const std::vector<int64_t>& bits, at::Tensor& codes, at::Tensor& indices) {
  using R = Raw<scalar_t>;
  using raw_t = typename R::type;
  static_assert(sizeof(raw_t) == sizeof(scalar_t), "raw type must match the scalar size");
  const int64_t n = z.size(0), k = z.size(1), groups = static_cast<int64_t>(bits.size());
  const raw_t* src = reinterpret_cast<const raw_t*>(z.const_data_ptr<scalar_t>());
  raw_t* out = reinterpret_cast<raw_t*>(codes.mutable_data_ptr<scalar_t>());
  int64_t* idx = indices.mutable_data_ptr<int64_t>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  int64_t channel = 0;
  for (int64_t g0 = 0; g0 < groups; g0 += kGroupsPerLaunch) {
    GroupTable table{};
    table.first = static_cast<int32_t>(g0);
    table.count = static_cast<int32_t>(std::min<int64_t>(kGroupsPerLaunch, groups - g0));
    for (int g = 0; g < table.count; ++g) {
      table.offset[g] = static_cast<int32_t>(channel);
      table.bits[g] = static_cast<int32_t>(bits[g0 + g]);
      channel += bits[g0 + g];
    }
    const int64_t threads = n * table.count;
    const int64_t blocks = std::min<int64_t>((threads + kThreads - 1) / kThreads, int64_t(1) << 20);
    quantize_kernel<raw_t, R::inf, R::one, R::minus_one><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        src, z.stride(0), z.stride(1), n, k, table, out, idx);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> lfq_quantize_cuda(const at::Tensor& z, at::IntArrayRef group_bits) {
  MAGVIT2_CHECK_LATENTS("lfq_quantize", z);
  const int64_t n = z.size(0), k = z.size(1);
  check_group_bits(group_bits, k);
  TORCH_CHECK(k <= INT32_MAX, "lfq_quantize: z must have K < 2^31 channels, got ", k);

  const std::vector<int64_t> bits(group_bits.begin(), group_bits.end());
  at::Tensor codes = at::empty({n, k}, z.options());
  at::Tensor indices = at::empty({static_cast<int64_t>(bits.size()), n}, z.options().dtype(at::kLong));
  if (n == 0) {
    return {codes, indices};
  }
  const c10::cuda::CUDAGuard guard(z.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "lfq_quantize_cuda",
                                  [&] { launch_quantize<scalar_t>(z, bits, codes, indices); });
  return {codes, indices};
}

TORCH_LIBRARY_IMPL(magvit2, CUDA, m) { m.impl("lfq_quantize", &lfq_quantize_cuda); }

}  // namespace magvit2
