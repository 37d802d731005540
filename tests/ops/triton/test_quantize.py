"""Triton lfq_quantize: codes, indices and factorized indices bit-exact against the plain-torch reference."""

import pytest
import torch

from magvit2.ops import reference
from magvit2.ops.triton import lfq

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def specials(z: torch.Tensor) -> torch.Tensor:
    """+-0, NaN, +-Inf and a subnormal of the dtype in the first rows (all must give code -1 / bit 0 but +Inf)."""
    z = z.clone()
    values = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), torch.finfo(z.dtype).smallest_normal / 4]
    for row, v in enumerate(values[: z.shape[0]]):
        z[row, row % z.shape[1]] = v
    return z


def check(z: torch.Tensor, bits: list[int]) -> None:
    codes, indices = lfq.lfq_quantize(z, bits)
    want_codes, want_indices = reference.lfq_quantize(z, bits)
    assert codes.dtype == z.dtype and codes.shape == z.shape
    assert indices.dtype == torch.int64 and indices.shape == (len(bits), z.shape[0])
    assert torch.equal(codes, want_codes)
    assert torch.equal(indices, want_indices)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 5, 18, 62], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("n", [0, 1, 7, 65, 1000], ids=lambda n: f"N{n}")
def test_bit_exact(n, k, dtype, device):
    z = torch.randn(n, k).to(dtype)
    check((specials(z) if n else z).to(device), [k])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "n, bits", [(1, [6, 12]), (257, [6, 12]), (33, [9, 9]), (5, [1, 2, 3]), (9, [30, 32])], ids=lambda v: str(v)
)
def test_factorized_indices(n, bits, dtype, device):
    z = specials(torch.randn(n, sum(bits)).to(dtype)).to(device)
    check(z, bits)
    _, indices = lfq.lfq_quantize(z, bits)
    if bits == [6, 12]:  # full index = pre + 64 * post
        full = reference.lfq_quantize(z, [18])[1][0]
        assert torch.equal(indices[0] + 64 * indices[1], full)


@pytest.mark.parametrize("layout", ["transposed", "strided", "offset"])
def test_non_contiguous(layout, device):
    base = torch.randn(40, 64, device=device)
    z = {"transposed": base[:18].t(), "strided": base[:, ::3], "offset": base[3:, 5:23]}[layout]
    assert not z.is_contiguous()
    check(z, [6, 12] if z.shape[1] == 18 else [z.shape[1]])
