"""Entropy forward+backward at K = 18: C++ kernel vs the three bare GEMMs (the floor), the plain-torch form of the
same algorithm, and the official full-softmax formula (time and peak memory, each in its own process)."""

import pytest
import torch
from conftest import FULL, interleaved
from memory import peak_mib

from magvit2 import ops
from magvit2.ops import reference

K, T, EPS = 18, 100.0, 1e-5
FLOOR_NS = [2048, 65536] if FULL else [256]
NAIVE_N = 2048 if FULL else 32


def fwd_bwd(kind: str, z: torch.Tensor) -> torch.Tensor:
    z.grad = None
    if kind == "ours":
        ps, cb = ops.lfq_entropy(z, T, EPS)
    elif kind == "reference":
        ps, cb, _ = reference.lfq_entropy(z, T, EPS)
    else:
        ps, cb = reference.lfq_entropy_naive(z, T, EPS)
    (ps - cb).backward()
    return z.grad


def close(grad: torch.Tensor, want: torch.Tensor) -> None:
    """float32 gradients at t = 100 carry the rounding of 4 t z: compare against the largest entry."""
    torch.testing.assert_close(grad, want, rtol=0, atol=2e-3 * want.abs().max().item())


def bare_gemms(n: int):
    """The GEMMs any exact method needs: forward (512 x N) @ (N x 512), backward two (N x 512) @ (512 x 512)."""
    a, b, d = torch.rand(512, n), torch.rand(n, 512), torch.rand(512, 512)
    return lambda: (a @ b, b @ d, b @ d.t())


@pytest.mark.parametrize("n", FLOOR_NS, ids=lambda n: f"N{n}")
def test_entropy_vs_floor_and_reference(n, ratio):
    torch.manual_seed(0)
    z = (torch.randn(n, K) * 0.05).requires_grad_()
    rounds = (9 if n <= 2048 else 5) if FULL else 3
    times = interleaved(
        {"ours": lambda: fwd_bwd("ours", z), "gemms": bare_gemms(n), "reference": lambda: fwd_bwd("reference", z)},
        rounds,
    )
    close(fwd_bwd("ours", z).clone(), fwd_bwd("reference", z))
    bench = f"entropy fwd+bwd N={n} K={K}"
    ratio(bench, "ours / three bare GEMMs (time)", times["ours"] / times["gemms"], "<= 1.5")
    ratio(bench, "plain-torch reference / ours (time)", times["reference"] / times["ours"], "> 1")
    ratio(bench, "ours ms (context)", times["ours"] * 1e3)


def test_entropy_vs_naive_official(ratio):
    torch.manual_seed(0)
    z = (torch.randn(NAIVE_N, K) * 0.05).requires_grad_()
    times = interleaved({"ours": lambda: fwd_bwd("ours", z), "naive": lambda: fwd_bwd("naive", z)}, 1 if FULL else 2)
    ours_grad = fwd_bwd("ours", z).clone()
    close(ours_grad, fwd_bwd("naive", z))
    mem_ours, mem_naive = peak_mib("ours", NAIVE_N), peak_mib("naive", NAIVE_N)
    assert mem_ours > 0 and mem_naive > 0
    bench = f"entropy fwd+bwd N={NAIVE_N} K={K}"
    ratio(bench, "naive official / ours (time)", times["naive"] / times["ours"], ">= 300")
    ratio(bench, "naive official / ours (peak RSS above baseline)", mem_naive / mem_ours, ">= 150")
    ratio(bench, "peak MiB ours (context)", mem_ours)
    ratio(bench, "peak MiB naive official (context)", mem_naive)
    ratio(bench, "naive s (context)", times["naive"])


@pytest.mark.parametrize("kind", ["ours", "reference"])
def test_entropy(benchmark, kind):
    n = FLOOR_NS[0]
    benchmark.group = f"entropy fwd+bwd N={n} K={K}"
    z = (torch.randn(n, K) * 0.05).requires_grad_()
    grad = benchmark(lambda: fwd_bwd(kind, z))
    assert torch.isfinite(grad).all()


def test_bare_gemms(benchmark):
    n = FLOOR_NS[0]
    benchmark.group = f"entropy fwd+bwd N={n} K={K}"
    out = benchmark(bare_gemms(n))
    assert out[0].shape == (512, 512)
