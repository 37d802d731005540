"""lfq_quantize on (N, 18) float32: C++ kernel vs the reference where + mask-sum path vs a plain copy."""

import pytest
import torch
from conftest import FULL, interleaved

from magvit2 import ops
from magvit2.ops import reference

N = 2**20 if FULL else 2**14
K = 18
ROUNDS = 15 if FULL else 3


@pytest.fixture(scope="module")
def z():
    torch.manual_seed(0)
    return torch.randn(N, K)


def test_quantize_ratios(z, ratio):
    out = torch.empty_like(z)
    times = interleaved(
        {
            "ours": lambda: ops.lfq_quantize(z),
            "reference": lambda: reference.lfq_quantize(z, [K]),
            "copy": lambda: torch.empty_like(z).copy_(z),  # fresh output, as the kernels allocate theirs
            "copy_prealloc": lambda: out.copy_(z),  # memcpy into memory already mapped
        },
        ROUNDS,
    )
    codes, idx = ops.lfq_quantize(z)
    ref_codes, ref_idx = reference.lfq_quantize(z, [K])
    assert torch.equal(codes, ref_codes) and torch.equal(idx, ref_idx[0])
    moved = z.numel() * 4 + codes.numel() * 4 + idx.numel() * 8  # read z, write codes + indices
    copied = 2 * z.numel() * 4
    bench = f"quantize N={N} K={K} f32"
    ratio(bench, "reference / ours (time)", times["reference"] / times["ours"], ">= 5")
    ratio(bench, "bandwidth ours / copy (fresh output)", (moved / times["ours"]) / (copied / times["copy"]), ">= 0.6")
    ratio(bench, "bandwidth ours / copy (preallocated)", (moved / times["ours"]) / (copied / times["copy_prealloc"]))
    ratio(bench, "ours ms (context)", times["ours"] * 1e3)


@pytest.mark.parametrize("impl", ["ours", "reference", "copy"])
def test_quantize(benchmark, z, impl):
    benchmark.group = f"quantize N={N} K={K} float32"
    fn = {
        "ours": lambda: ops.lfq_quantize(z),
        "reference": lambda: reference.lfq_quantize(z, [K]),
        "copy": lambda: torch.empty_like(z).copy_(z),
    }[impl]
    result = benchmark(fn)
    first = result[0] if isinstance(result, tuple) else result
    assert first.shape == z.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_quantize_dtypes(benchmark, z, dtype):
    benchmark.group = f"quantize N={N} K={K} by dtype"
    x = z.to(dtype)
    codes, idx = benchmark(lambda: ops.lfq_quantize(x))
    assert torch.equal(idx, reference.lfq_quantize(x, [K])[1][0])
