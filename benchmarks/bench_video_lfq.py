"""The LFQ part of a video tokenizer's training step at the official per-device batch: 2 clips of 17 x 128 x 128 ->
latents (2, 18, 5, 16, 16), 2,560 tokens. Quantize + entropy (per-sample and codebook, t = 100) + commitment, forward
and backward: ours (`magvit2.nn.LFQ`: the fused quantize and the exact factorized entropy) vs the official formula
(sign quantization with a straight-through estimator, the full (N, 2^18) softmax over the materialised codebook);
time interleaved in one process, peak RSS above the process baseline each in its own process. Smoke: 1 clip of 5 x 16
x 16 with a 2 x 4 x 4 latent grid (32 tokens).

    python benchmarks/bench_video_lfq.py ours|official CLIPS T H W   # prints PEAK_MIB <value>
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from conftest import FULL, interleaved
from memory import status_kib

K, T, EPS = 18, 100.0, 1e-5
SHAPE = (2, K, 5, 16, 16) if FULL else (1, K, 2, 4, 4)  # (clips, K, t, h, w) of the official 17 x 128 x 128 clips


def step(kind: str, z: torch.Tensor, lfq=None) -> torch.Tensor:
    """One LFQ forward + backward on latents z (B, K, t, h, w); returns z.grad."""
    from magvit2.ops import reference

    z.grad = None
    if kind == "ours":
        loss = lfq(z).loss
    else:  # the official LFQ: codes = sign (z > 0 -> +1), straight through; the entropy over all 2^K codes
        tokens = z.movedim(1, -1).reshape(-1, K)
        codes = torch.where(tokens > 0, 1.0, -1.0)
        quantized = tokens + (codes - tokens).detach()
        per_sample, codebook = reference.lfq_entropy_naive(tokens, T, EPS)
        commitment = (tokens - quantized.detach()).square().mean()
        loss = 0.1 * (per_sample - codebook) + 0.25 * commitment
    loss.backward()
    return z.grad


def make_lfq():
    from magvit2.nn import LFQ

    return LFQ(dim=K, codebook_size=2**K, entropy_weight=0.1, commitment_weight=0.25, inv_temperature=T).train()


def latents(shape) -> torch.Tensor:
    torch.manual_seed(0)
    return (torch.randn(*shape) * 0.05).requires_grad_()


def main(kind: str, shape: tuple[int, ...]) -> float:
    lfq = make_lfq()
    step(kind, latents((1, K, 1, 2, 2)), lfq)  # thread pools, BLAS buffers, op registration
    z = latents(shape)
    Path("/proc/self/clear_refs").write_text("5")
    base = status_kib("VmRSS")
    step(kind, z, lfq)
    return (status_kib("VmHWM") - base) / 1024


def peak_mib(kind: str, shape: tuple[int, ...]) -> float:
    out = subprocess.run(
        [sys.executable, __file__, kind, *map(str, shape)], capture_output=True, text=True, check=True
    ).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("PEAK_MIB")))


def test_video_lfq_step_vs_official_formula(ratio):
    lfq = make_lfq()
    z = latents(SHAPE)
    ours, official = step("ours", z, lfq).clone(), step("official", z).clone()
    # the same loss terms: the entropy gradients agree to float32 rounding at t = 100
    torch.testing.assert_close(ours, official, rtol=0, atol=2e-3 * official.abs().max().item())
    times = interleaved(
        {"ours": lambda: step("ours", z, lfq), "official": lambda: step("official", z)}, 1 if FULL else 2
    )
    mem_ours, mem_official = peak_mib("ours", SHAPE), peak_mib("official", SHAPE)
    n = SHAPE[0] * SHAPE[2] * SHAPE[3] * SHAPE[4]
    bench = f"video LFQ step, {SHAPE[0]} clip(s), {n} tokens, K={K}"
    ratio(bench, "official formula / ours (time)", times["official"] / times["ours"], ">= 100 (issue)")
    ratio(bench, "official formula / ours (peak RSS above baseline)", mem_official / max(mem_ours, 1e-3), ">= 100")
    ratio(bench, "ours ms (context)", times["ours"] * 1e3)
    ratio(bench, "official s (context)", times["official"])
    ratio(bench, "peak MiB ours (context)", mem_ours)
    ratio(bench, "peak MiB official (context)", mem_official)


if __name__ == "__main__":
    print(f"PEAK_MIB {main(sys.argv[1], tuple(int(a) for a in sys.argv[2:])):.3f}")
