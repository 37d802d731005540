// Declarations of the CPU kernels, for the C++ test build (CMakeLists.txt) that calls them without Python.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace magvit2 {

std::tuple<at::Tensor, at::Tensor> lfq_quantize_cpu(const at::Tensor& z, at::IntArrayRef group_bits);

std::tuple<at::Tensor, at::Tensor, at::Tensor> lfq_entropy_cpu(const at::Tensor& z, double inv_temperature,
                                                               double eps);

at::Tensor lfq_entropy_backward_cpu(const at::Tensor& grad_per_sample, const at::Tensor& grad_codebook,
                                    const std::optional<at::Tensor>& grad_avg, const at::Tensor& z,
                                    const at::Tensor& avg, double inv_temperature, double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor> lfq_entropy_tiled_cpu(const at::Tensor& z, double inv_temperature,
                                                                     double eps, bool need_grad, int64_t tile);

at::Tensor sample_tokens_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& uncond, double cfg_scale,
                             double temperature, int64_t top_k, double top_p, int64_t seed, int64_t offset);

at::Tensor decode_block_cpu(const at::Tensor& x, const at::Tensor& attention_norm, const at::Tensor& wqkv,
                            const at::Tensor& wo, const at::Tensor& ffn_norm, const at::Tensor& w1,
                            const at::Tensor& w3, const at::Tensor& w2, at::Tensor& k_cache, at::Tensor& v_cache,
                            const at::Tensor& rope, const at::Tensor& pos, double eps);

at::Tensor decode_logits_cpu(const at::Tensor& z, const at::Tensor& norm, const at::Tensor& head, double eps,
                             std::optional<double> cfg_scale);

}  // namespace magvit2
