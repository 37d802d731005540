// C++ checks of the CPU kernels without Python: bit conventions of lfq_quantize, the exact entropy against a
// brute-force softmax over all 2^K codes (float64), and the float32 decode block against its float64 path. Built by CMakeLists.txt; tests/test_packaging.py runs it.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/ops.h"

namespace {

int failures = 0;

std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2e", v);
  return buf;
}

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  failures += ok ? 0 : 1;
}

void test_quantize_conventions() {
  // Channel i <-> bit i (LSB-first); 0, -0 and NaN give -1.
  at::Tensor z = at::tensor({0.3, -1.0, 2.0, 0.0, -0.0, NAN}, at::kFloat).reshape({1, 6});
  auto [codes, indices] = magvit2::lfq_quantize_cpu(z, {6});
  at::Tensor expected_codes = at::tensor({1.0, -1.0, 1.0, -1.0, -1.0, -1.0}, at::kFloat).reshape({1, 6});
  expect(at::equal(codes, expected_codes), "quantize codes: +1 where z > 0 else -1");
  expect(indices.size(0) == 1 && indices.item<int64_t>() == 5, "quantize index LSB-first: [+, -, +, ...] -> 5");

  // Factorized [6, 12] equals the split of the full index: full = pre + 64 * post.
  at::Tensor r = at::randn({1001, 18}, at::kFloat);
  auto [c_full, i_full] = magvit2::lfq_quantize_cpu(r, {18});
  auto [c_fact, i_fact] = magvit2::lfq_quantize_cpu(r, {6, 12});
  expect(at::equal(c_full, c_fact), "factorized codes equal plain codes");
  expect(at::equal(i_full[0], i_fact[0] + 64 * i_fact[1]), "factorized [6, 12]: full = pre + 64 * post");

  // Non-contiguous input (transposed) and half precision give the same bits.
  at::Tensor t = r.t().contiguous().t();
  expect(at::equal(std::get<1>(magvit2::lfq_quantize_cpu(t, {18})), i_full), "transposed input, same indices");
  expect(at::equal(std::get<1>(magvit2::lfq_quantize_cpu(r.to(at::kHalf), {18})), i_full),
         "float16 input, same indices");
}

// Brute force: softmax of 2 t <z, c> over all 2^K codes c in {-1, 1}^K, code j has c_i = 2 ((j >> i) & 1) - 1.
std::pair<double, double> brute_force(const at::Tensor& z, double t, double eps) {
  const int64_t k = z.size(1);
  at::Tensor j = at::arange(int64_t(1) << k, at::kLong).unsqueeze(1);
  at::Tensor bits = at::bitwise_and(at::bitwise_right_shift(j, at::arange(k, at::kLong)), 1).to(at::kDouble);
  at::Tensor codebook = bits * 2 - 1;                     // (2^K, K)
  at::Tensor logits = at::mm(z, codebook.t()) * (2 * t);  // (N, 2^K)
  at::Tensor logp = at::log_softmax(logits, 1);
  at::Tensor p = logp.exp();
  const double per_sample = -(p * logp).sum(1).mean().item<double>();
  at::Tensor avg = p.mean(0);
  const double codebook_entropy = -(avg * (avg + eps).log()).sum().item<double>();
  return {per_sample, codebook_entropy};
}

void test_entropy_brute_force() {
  for (int64_t k : {1, 4, 9, 12}) {
    for (double eps : {0.0, 1e-5}) {
      at::Tensor z = at::randn({37, k}, at::kDouble) * 0.3;
      auto [per_sample, codebook, avg] = magvit2::lfq_entropy_cpu(z, 2.0, eps);
      auto [bf_ps, bf_cb] = brute_force(z, 2.0, eps);
      const double e1 = std::abs(per_sample.item<double>() - bf_ps) / bf_ps;
      const double e2 = std::abs(codebook.item<double>() - bf_cb) / bf_cb;
      expect(e1 < 1e-9 && e2 < 1e-9, "entropy vs brute force K=" + std::to_string(k) + " eps=" + std::to_string(eps) +
                                         " rel err " + sci(e1) + ", " + sci(e2));
      expect(std::abs(avg.sum().item<double>() - 1.0) < 1e-12, "codebook average sums to 1");
    }
  }
}

void test_entropy_gradient_finite_difference() {
  const int64_t k = 6;
  const double t = 1.5, eps = 1e-5, h = 1e-6;
  at::Tensor z = at::randn({5, k}, at::kDouble) * 0.5;
  auto loss = [&](const at::Tensor& x) {
    auto [ps, cb, avg] = magvit2::lfq_entropy_cpu(x, t, eps);
    return ps.item<double>() - 2.0 * cb.item<double>();
  };
  auto [ps, cb, avg] = magvit2::lfq_entropy_cpu(z, t, eps);
  at::Tensor grad = magvit2::lfq_entropy_backward_cpu(at::scalar_tensor(1.0, at::kDouble),
                                                      at::scalar_tensor(-2.0, at::kDouble), std::nullopt, z, avg, t,
                                                      eps);
  double worst = 0.0;
  for (int64_t n = 0; n < z.size(0); ++n) {
    for (int64_t i = 0; i < k; ++i) {
      at::Tensor up = z.clone(), down = z.clone();
      up[n][i] += h;
      down[n][i] -= h;
      const double numeric = (loss(up) - loss(down)) / (2 * h);
      worst = std::max(worst, std::abs(numeric - grad[n][i].item<double>()));
    }
  }
  expect(worst < 1e-6, "entropy backward vs central differences, max abs err " + sci(worst));
}

void test_decode_block_float_vs_double() {
  // The float32 kernel (own matmul tiles and attention) against the same block in float64 (the ATen path), for
  // 16 rows at a mid-cache position on the weights as a block holds them; the cache row written must agree too.
  const int64_t rows = 16, heads = 4, d = 16, dim = heads * d, hidden = 96, length = 12, pos = 7;
  auto rnd = [](std::vector<int64_t> shape, double scale) { return at::randn(shape, at::kDouble) * scale; };
  // attention_norm, wqkv, wo, ffn_norm, w1, w3, w2
  std::vector<at::Tensor> w = {1 + rnd({dim}, 0.2),         rnd({3 * dim, dim}, 0.125), rnd({dim, dim}, 0.125),
                               1 + rnd({dim}, 0.2),         rnd({hidden, dim}, 0.125),  rnd({hidden, dim}, 0.125),
                               rnd({dim, hidden}, 0.1)};
  const at::Tensor x = rnd({rows, dim}, 1.0), k0 = rnd({rows, heads, length, d}, 1.0), v0 = rnd({rows, heads, length, d}, 1.0);
  const at::Tensor rope = at::rand({length, d / 2, 2}, at::kFloat), p = at::scalar_tensor(pos, at::kLong);
  at::Tensor k64 = k0.clone(), v64 = v0.clone();
  const at::Tensor want = magvit2::decode_block_cpu(x, w[0], w[1], w[2], w[3], w[4], w[5], w[6], k64, v64, rope, p, 1e-5);
  std::vector<at::Tensor> wf;
  for (const at::Tensor& m : w) wf.push_back(m.to(at::kFloat));
  at::Tensor k32 = k0.to(at::kFloat), v32 = v0.to(at::kFloat);
  const at::Tensor got = magvit2::decode_block_cpu(x.to(at::kFloat), wf[0], wf[1], wf[2], wf[3], wf[4], wf[5], wf[6],
                                                   k32, v32, rope, p, 1e-5);
  const double err = (got.to(at::kDouble) - want).abs().max().item<double>();
  const double kerr = (k32.to(at::kDouble) - k64).abs().max().item<double>();
  expect(err < 1e-4 && kerr < 1e-5,
         "decode_block float32 vs float64, max abs err " + sci(err) + ", cache " + sci(kerr));
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_quantize_conventions();
  test_entropy_brute_force();
  test_entropy_gradient_finite_difference();
  test_decode_block_float_vs_double();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
