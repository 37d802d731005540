// Floating-point values as raw bits, for the sign test of lfq_quantize on CPU and CUDA alike: z > 0 exactly when
// the raw bits u satisfy (u - 1) < the bits of +inf (so -0, NaN and every negative value map to -1), and the codes
// +1 / -1 are written as their bit patterns.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace magvit2 {

template <typename scalar_t>
struct Raw;
template <>
struct Raw<float> {
  using type = uint32_t;
  static constexpr type inf = 0x7f800000u, one = 0x3f800000u, minus_one = 0xbf800000u;
};
template <>
struct Raw<double> {
  using type = uint64_t;
  static constexpr type inf = 0x7ff0000000000000ull, one = 0x3ff0000000000000ull, minus_one = 0xbff0000000000000ull;
};
template <>
struct Raw<at::Half> {
  using type = uint16_t;
  static constexpr type inf = 0x7c00u, one = 0x3c00u, minus_one = 0xbc00u;
};
template <>
struct Raw<at::BFloat16> {
  using type = uint16_t;
  static constexpr type inf = 0x7f80u, one = 0x3f80u, minus_one = 0xbf80u;
};

template <typename raw_t, raw_t kInf>
C10_HOST_DEVICE inline bool positive(raw_t u) {
  return static_cast<raw_t>(u - 1) < kInf;
}

}  // namespace magvit2
