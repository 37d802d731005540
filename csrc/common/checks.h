// User-facing argument checks for the kernels: every message names the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

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

}  // namespace magvit2
