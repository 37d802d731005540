"""The kernel layer in a minute: LFQ codes and indices, the factorized [6, 12] split, and the exact entropy penalty
against the official full-softmax formula on the same latents.

    python examples/lfq_ops.py
"""

import time

import torch

from magvit2 import ops
from magvit2.ops.reference import lfq_entropy_naive


def main() -> None:
    torch.manual_seed(0)
    z = torch.randn(4096, 18) * 0.05  # 4096 tokens of an 18-bit LFQ latent (a 64 x 64 token grid)

    codes, index = ops.lfq_quantize(z)
    _, (pre, post) = ops.lfq_quantize(z, factorized_bits=[6, 12])
    assert torch.equal(index, pre + 64 * post)
    print(f"codes {tuple(codes.shape)} in {{-1, +1}}; indices {index[:4].tolist()} ... < 2^18")
    print(f"factorized [6, 12]: pre {pre[:4].tolist()} (64-way), post {post[:4].tolist()} (4096-way)")

    z.requires_grad_(True)
    start = time.perf_counter()
    per_sample, codebook = ops.lfq_entropy(z, inv_temperature=100.0, eps=1e-5)
    (per_sample - codebook).backward()
    ours_ms = (time.perf_counter() - start) * 1e3
    print(f"exact entropy, N=4096 K=18: per-sample {per_sample:.6f}, codebook {codebook:.6f}, fwd+bwd {ours_ms:.0f} ms")

    small = z.detach()[:128]
    start = time.perf_counter()
    naive_ps, naive_cb = lfq_entropy_naive(small.double(), 100.0, 1e-5)  # materialises 128 x 2^18 probabilities
    naive_ms = (time.perf_counter() - start) * 1e3
    exact_ps, exact_cb = ops.lfq_entropy(small.double(), 100.0, eps=1e-5)
    print(
        f"official formula, N=128: per-sample {naive_ps:.9f} vs {exact_ps:.9f}, "
        f"codebook {naive_cb:.9f} vs {exact_cb:.9f} ({naive_ms:.0f} ms forward only)"
    )
    assert torch.allclose(naive_ps, exact_ps, rtol=1e-9) and torch.allclose(naive_cb, exact_cb, rtol=1e-9)


if __name__ == "__main__":
    main()
