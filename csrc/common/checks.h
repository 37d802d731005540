// User-facing argument checks for the kernels, shared by the CPU and CUDA files: every message names the argument
// and what was expected.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#define MAGVIT2_CHECK_LATENTS(fn, z)                                                                        \
  do {                                                                                                     \
    TORCH_CHECK((z).dim() == 2, fn, ": z must be 2-D (N, K), got ", (z).dim(), "-D ", (z).sizes());        \
    TORCH_CHECK(at::isFloatingType((z).scalar_type()),                                                     \
                fn, ": z must be float16, bfloat16, float32 or float64, got ", (z).scalar_type());          \
    TORCH_CHECK((z).size(1) >= 1, fn, ": z must have K >= 1 channels, got ", (z).sizes());                  \
  } while (0)

namespace magvit2 {

constexpr int64_t kMaxIndexBits = 62;
constexpr int64_t kMaxEntropyBits = 24;

// The accumulation type of the entropy kernels: float64 for float64 input, float32 otherwise.
inline at::ScalarType opmath(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// lfq_quantize: the group sizes, each in [1, kMaxIndexBits], summing to z's K channels.
inline void check_group_bits(at::IntArrayRef group_bits, int64_t k) {
  TORCH_CHECK(!group_bits.empty(), "lfq_quantize: group_bits must name at least one group");
  int64_t total = 0;
  for (int64_t b : group_bits) {
    TORCH_CHECK(b >= 1 && b <= kMaxIndexBits, "lfq_quantize: every group_bits entry must be in [1, ",
                kMaxIndexBits, "], got ", group_bits);
    total += b;
  }
  TORCH_CHECK(total == k, "lfq_quantize: group_bits ", group_bits, " sum to ", total, ", but z has K = ", k);
}

inline void check_entropy_args(const char* fn, const at::Tensor& z, double inv_temperature, double eps) {
  MAGVIT2_CHECK_LATENTS(fn, z);
  TORCH_CHECK(z.size(1) <= kMaxEntropyBits, fn, ": K = ", z.size(1), " means a 2^K-entry codebook average; K <= ",
              kMaxEntropyBits, " is supported");
  TORCH_CHECK(std::isfinite(inv_temperature) && inv_temperature > 0, fn,
              ": inv_temperature must be a finite number > 0, got ", inv_temperature);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, fn, ": eps must be a finite number >= 0, got ", eps);
}

// lfq_entropy_backward: the saved codebook average (2^Ka, 2^Kb) in the accumulation type, scalar gradients.
inline void check_entropy_backward_args(const at::Tensor& z, const at::Tensor& avg, const at::Tensor& grad_per_sample,
                                        const at::Tensor& grad_codebook) {
  const int64_t k = z.size(1), wa = int64_t(1) << ((k + 1) / 2), wb = int64_t(1) << (k / 2);
  const at::ScalarType acc = opmath(z.scalar_type());
  TORCH_CHECK(avg.scalar_type() == acc && avg.dim() == 2 && avg.size(0) == wa && avg.size(1) == wb,
              "lfq_entropy_backward: avg must be (2^Ka, 2^Kb) = (", wa, ", ", wb, ") in ", acc, ", got ",
              avg.sizes(), " ", avg.scalar_type());
  TORCH_CHECK(grad_per_sample.numel() == 1 && grad_codebook.numel() == 1,
              "lfq_entropy_backward: grad_per_sample and grad_codebook must be scalars");
}

// sample_tokens: (rows, vocab) floating logits, an optional uncond of the same shape and dtype, and the filters.
inline void check_sample_args(const at::Tensor& logits, const std::optional<at::Tensor>& uncond, double temperature,
                              int64_t top_k, double top_p) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "sample_tokens: logits must be 2-D (rows, vocab), got ", logits.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(logits.scalar_type()), "sample_tokens: logits must be floating, got ",
                    logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(1) >= 1, "sample_tokens: logits must have a vocabulary of >= 1, got ", logits.sizes());
  TORCH_CHECK_VALUE(temperature > 0, "sample_tokens: temperature must be > 0 (top_k=1 is greedy), got ", temperature);
  TORCH_CHECK_VALUE(top_k >= 0, "sample_tokens: top_k must be >= 0 (0 = off), got ", top_k);
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1, "sample_tokens: top_p must be in (0, 1], got ", top_p);
  if (uncond.has_value() && uncond->defined()) {
    TORCH_CHECK_VALUE(uncond->sizes() == logits.sizes() && uncond->scalar_type() == logits.scalar_type(),
                      "sample_tokens: uncond must match logits (", logits.sizes(), ", ", logits.scalar_type(),
                      "), got ", uncond->sizes(), ", ", uncond->scalar_type());
  }
}

}  // namespace magvit2
