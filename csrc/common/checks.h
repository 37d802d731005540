// User-facing argument checks for the kernels, shared by the CPU and CUDA files: every message names the argument
// and what was expected.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#define MAGVIT2_CHECK_LATENTS(fn, z)                                                                        \
  do {                                                                                                     \
    TORCH_CHECK((z).dim() == 2, fn, ": z must be 2-D (N, K), got ", (z).dim(), "-D ", (z).sizes());        \
    TORCH_CHECK(at::isFloatingType((z).scalar_type()),                                                     \
                fn, ": z must be float16, bfloat16, float32 or float64, got ", (z).scalar_type());          \
    TORCH_CHECK((z).size(1) >= 1, fn, ": z must have K >= 1 channels, got ", (z).sizes());                  \
  } while (0)

namespace magvit2 {

constexpr int64_t kMaxIndexBits = 62;
constexpr int64_t kMaxEntropyBits = 24;       // lfq_entropy returns the whole 2^K average
constexpr int64_t kMaxTiledEntropyBits = 32;  // lfq_entropy_tiled holds O(N 2^ceil(K/2)) and one tile at a time

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

inline void check_entropy_args(const char* fn, const at::Tensor& z, double inv_temperature, double eps,
                               int64_t max_bits = kMaxEntropyBits) {
  MAGVIT2_CHECK_LATENTS(fn, z);
  TORCH_CHECK(z.size(1) <= max_bits, fn, ": K = ", z.size(1), " means a 2^K-entry codebook average; K <= ",
              max_bits, " is supported");
  TORCH_CHECK(std::isfinite(inv_temperature) && inv_temperature > 0, fn,
              ": inv_temperature must be a finite number > 0, got ", inv_temperature);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, fn, ": eps must be a finite number >= 0, got ", eps);
}

// lfq_entropy_tiled: K <= 32 and a tile edge of 0 (automatic) or >= 1.
inline void check_entropy_tiled_args(const at::Tensor& z, double inv_temperature, double eps, int64_t tile) {
  check_entropy_args("lfq_entropy_tiled", z, inv_temperature, eps, kMaxTiledEntropyBits);
  TORCH_CHECK(tile >= 0, "lfq_entropy_tiled: tile must be >= 0 (0 = automatic), got ", tile);
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

// A shape as Python prints a tuple: (3,) or (24, 8).
inline std::string shape_tuple(at::IntArrayRef shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

// One transformer block's weights as the module stores them: RMSNorm weights (dim,), nn.Linear weights (out, in).
struct DecodeWeights {
  const at::Tensor& attention_norm;  // (dim,)
  const at::Tensor& wqkv;            // (3 dim, dim)
  const at::Tensor& wo;              // (dim, dim)
  const at::Tensor& ffn_norm;        // (dim,)
  const at::Tensor& w1;              // (hidden, dim)
  const at::Tensor& w3;              // (hidden, dim)
  const at::Tensor& w2;              // (dim, hidden)
};

// decode_block: x (R, dim); caches (R, H, S, D) contiguous in x's dtype with H * D = dim and D even; weights in x's
// dtype as the block stores them (DecodeWeights); rope float32 (L, D / 2, 2); pos one integer in [0, min(S, L)).
// Returns pos.
inline int64_t check_decode_args(const at::Tensor& x, const DecodeWeights& w, const at::Tensor& k_cache,
                                 const at::Tensor& v_cache, const at::Tensor& rope, const at::Tensor& pos,
                                 double eps) {
  TORCH_CHECK_VALUE(x.dim() == 2 && at::isFloatingType(x.scalar_type()),
                    "decode_block: x must be a floating (rows, dim) tensor, got ", x.scalar_type(), " ", x.sizes());
  const int64_t rows = x.size(0), dim = x.size(1);
  TORCH_CHECK_VALUE(k_cache.dim() == 4 && k_cache.size(0) == rows && k_cache.size(1) * k_cache.size(3) == dim &&
                        k_cache.size(3) % 2 == 0,
                    "decode_block: k_cache must be (rows, heads, length, head_dim) with rows = ", rows,
                    ", heads * head_dim = ", dim, " and an even head_dim, got ", k_cache.sizes());
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), "decode_block: v_cache must match k_cache ",
                    k_cache.sizes(), ", got ", v_cache.sizes());
  for (const at::Tensor* c : {&k_cache, &v_cache}) {
    TORCH_CHECK_VALUE(c->scalar_type() == x.scalar_type() && c->is_contiguous(),
                      "decode_block: k_cache and v_cache must be contiguous ", x.scalar_type(), " tensors, got ",
                      c->scalar_type(), c->is_contiguous() ? "" : " (not contiguous)");
  }
  const int64_t hidden = w.w1.dim() == 2 ? w.w1.size(0) : -1;
  const struct {
    const char* name;
    const at::Tensor& w;
    std::vector<int64_t> shape;
  } weights[] = {{"attention_norm", w.attention_norm, {dim}}, {"wqkv", w.wqkv, {3 * dim, dim}},
                 {"wo", w.wo, {dim, dim}},     {"ffn_norm", w.ffn_norm, {dim}},
                 {"w1", w.w1, {hidden, dim}}, {"w3", w.w3, {hidden, dim}},
                 {"w2", w.w2, {dim, hidden}}};
  for (const auto& e : weights) {
    TORCH_CHECK_VALUE(e.w.sizes() == at::IntArrayRef(e.shape) && e.w.scalar_type() == x.scalar_type() &&
                          (hidden >= 1 || e.shape.size() == 1),
                      "decode_block: ", e.name, " must be ", shape_tuple(e.shape), " (as the block stores it, ",
                      "w1 and w3 (hidden, dim), w2 (dim, hidden)) in ", x.scalar_type(), ", got ",
                      shape_tuple(e.w.sizes()), " ", e.w.scalar_type());
  }
  const int64_t half = k_cache.size(3) / 2;
  TORCH_CHECK_VALUE(rope.dim() == 3 && rope.size(1) == half && rope.size(2) == 2 && rope.scalar_type() == at::kFloat,
                    "decode_block: rope must be a float32 (positions, head_dim / 2, 2) = (L, ", half,
                    ", 2) table, got ", rope.scalar_type(), " ", rope.sizes());
  TORCH_CHECK_VALUE(pos.numel() == 1 && !at::isFloatingType(pos.scalar_type()) && pos.scalar_type() != at::kBool,
                    "decode_block: pos must be one integer, got ", pos.scalar_type(), " ", pos.sizes());
  const int64_t n = pos.item<int64_t>();
  TORCH_CHECK_VALUE(n >= 0 && n < k_cache.size(2) && n < rope.size(0), "decode_block: pos must be in [0, ",
                    std::min(k_cache.size(2), rope.size(0)), ") (cache length ", k_cache.size(2), ", rope rows ",
                    rope.size(0), "), got ", n);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "decode_block: eps must be a finite number >= 0, got ", eps);
  return n;
}

// decode_logits: z (R, dim) floating, norm (dim,) and head (V, dim) (nn.Linear's layout) in z's dtype, R even
// under guidance.
inline void check_logits_args(const at::Tensor& z, const at::Tensor& norm, const at::Tensor& head, double eps,
                              const std::optional<double>& cfg_scale) {
  TORCH_CHECK_VALUE(z.dim() == 2 && at::isFloatingType(z.scalar_type()),
                    "decode_logits: z must be a floating (rows, dim) tensor, got ", z.scalar_type(), " ", z.sizes());
  TORCH_CHECK_VALUE(norm.dim() == 1 && norm.size(0) == z.size(1) && norm.scalar_type() == z.scalar_type(),
                    "decode_logits: norm must be (", z.size(1), ",) in ", z.scalar_type(), ", got ",
                    shape_tuple(norm.sizes()), " ", norm.scalar_type());
  TORCH_CHECK_VALUE(head.dim() == 2 && head.size(1) == z.size(1) && head.size(0) >= 1 &&
                        head.scalar_type() == z.scalar_type(),
                    "decode_logits: head must be (vocab, dim) with dim = ", z.size(1), " (as nn.Linear stores it) in ",
                    z.scalar_type(), ", got ", shape_tuple(head.sizes()), " ", head.scalar_type());
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "decode_logits: eps must be a finite number >= 0, got ", eps);
  if (cfg_scale.has_value()) {
    TORCH_CHECK_VALUE(std::isfinite(*cfg_scale), "decode_logits: cfg_scale must be finite, got ", *cfg_scale);
    TORCH_CHECK_VALUE(z.size(0) % 2 == 0, "decode_logits: with cfg_scale, z must hold [cond; uncond] rows (an even "
                      "count), got ", z.size(0));
  }
}

}  // namespace magvit2
