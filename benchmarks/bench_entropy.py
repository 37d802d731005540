"""Entropy forward+backward at K = 18: C++ kernel vs the three bare GEMMs (the floor), the plain-torch form of the
same algorithm, and the official full-softmax formula (time and peak memory, each in its own process). Large
codebooks (the tiled path): K = 18 ... 24 at N = 2048 and K = 32 at N = 64 against the same floor, with peak memory
and a float64 check."""

import tempfile
from pathlib import Path

import pytest
import torch
from conftest import FULL, interleaved
from memory import peak_mib, peak_mib_seconds

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


# --- large codebooks: the tiled path ----------------------------------------------------------------------------------

TILED_N = 2048 if FULL else 64
TILED_KS = [18, 20, 22, 24] if FULL else [22]
WIDE_N, WIDE_K = (64, 32) if FULL else (8, 26)


def floor_gemms(n: int, k: int):
    """The three GEMMs of N x 2^K multiply-adds any exact forward+backward needs, in the tiled kernel's shapes:
    M = P_A^T P_B, then P_B D^T and P_A D (one tile of D standing for the 2^K average it never holds)."""
    wa, wb = 2 ** ((k + 1) // 2), 2 ** (k // 2)
    pa, pb, d = torch.rand(n, wa), torch.rand(n, wb), torch.rand(wa, wb)
    return lambda: (pa.t() @ pb, pb @ d.t(), pa @ d)


def tiled_fwd_bwd(z: torch.Tensor) -> torch.Tensor:
    z.grad = None
    ps, cb, _ = torch.ops.magvit2.lfq_entropy_tiled.default(z, T, EPS, True, 0)
    (ps - cb).backward()
    return z.grad


@pytest.mark.parametrize("k", TILED_KS, ids=lambda k: f"K{k}")
def test_large_codebook_vs_floor(k, ratio):
    torch.manual_seed(0)
    n = TILED_N
    z = (torch.randn(n, k) * 0.05).requires_grad_()
    fns = {"ours": lambda: fwd_bwd("ours", z), "gemms": floor_gemms(n, k)}
    if k <= 20:  # lfq_entropy keeps the whole-average op here; the tiled op for comparison
        fns["tiled"] = lambda: tiled_fwd_bwd(z)
    times = interleaved(fns, 5 if FULL else 2)
    mem = peak_mib("ours", n, k)
    bench = f"entropy fwd+bwd N={n} K={k}"
    ratio(bench, "ours / three bare GEMMs (time)", times["ours"] / times["gemms"], "<= 2")
    if "tiled" in times:
        ratio(bench, "tiled op / three bare GEMMs (time)", times["tiled"] / times["gemms"])
        ratio(bench, "peak MiB tiled op (context)", peak_mib("tiled", n, k))
    ratio(bench, "ours ms (context)", times["ours"] * 1e3)
    ratio(bench, "sgemm GFLOP/s, floor GEMMs (context)", 3 * 2 * n * 2**k / times["gemms"] / 1e9)
    ratio(bench, "peak MiB above inputs (context)", mem, "<= 256" if k >= 22 else "")
    ratio(bench, "naive N x 2^K fp32 tensor, MiB (context)", n * 2**k * 4 / 2**20)


def test_widest_codebook_vs_float64(ratio):
    """K = 32 at N = 64 (full; smoke: K = 26 at N = 8): one forward+backward in its own process (time, peak
    memory), then its entropies and gradient against the float64 plain-torch tiled reference."""
    from magvit2.ops import reference

    n, k = WIDE_N, WIDE_K
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "out.pt")
        mem, seconds = peak_mib_seconds("ours", n, k, save=path)
        out = torch.load(path)
    z64 = out["z"].double()
    ps64, cb64, cb_grad64 = reference.lfq_entropy_tiled(z64, T, EPS, True, 0)
    ps_grad64 = reference.per_sample_entropy_grad(z64, T)
    ps, cb = out["entropies"]
    # ours' gradient of ps - cb less the exact per-sample term: its codebook gradient, with its own rounding
    cb_grad = ps_grad64 - out["grad"].double()
    rel = {
        "per-sample": abs(ps.item() - ps64.item()) / abs(ps64.item()),
        "codebook": abs(cb.item() - cb64.item()) / abs(cb64.item()),
        "codebook gradient": ((cb_grad - cb_grad64).norm() / cb_grad64.norm()).item(),
    }
    assert rel["per-sample"] <= 1e-5 and rel["codebook"] <= 1e-5 and rel["codebook gradient"] <= 1e-4, rel
    a, b, d = torch.rand(n, 4096), torch.rand(n, 4096), torch.rand(4096, 4096)
    gemm = interleaved({"gemm": lambda: (a.t() @ b, b @ d.t(), a @ d)}, 3)["gemm"]
    floor = gemm * 2**k / 2**24  # the same three GEMM shapes at N, scaled from 2^24 to 2^K entries
    bench = f"entropy fwd+bwd N={n} K={k}"
    ratio(bench, "ours / three bare GEMMs (time, scaled)", seconds / floor)
    ratio(bench, "ours s (context)", seconds)
    ratio(bench, "peak MiB above inputs (context)", mem)
    for name, value in rel.items():
        ratio(
            bench,
            f"{name} rel. error vs float64 (x1e6)",
            value * 1e6,
            "<= 10" if name != "codebook gradient" else "<= 100",
        )
