"""lfq_quantize: codes and indices bit-exact against the plain-torch reference, every dtype, shape and layout."""

import pytest
import torch

from magvit2 import ops
from magvit2.ops import reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
KS = [1, 5, 18, 31, 62]
NS = [0, 1, 7, 63, 64, 65, 1023, 4097]


def specials(z: torch.Tensor) -> torch.Tensor:
    """Plant +-0, NaN, +-Inf and the smallest subnormal of the dtype in the first rows."""
    z = z.clone()
    values = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), torch.finfo(z.dtype).smallest_normal / 4]
    for row, v in enumerate(values[: z.shape[0]]):
        z[row, row % z.shape[1]] = v
    return z


def check_exact(z: torch.Tensor, bits=None):
    got = ops.lfq_quantize(z, bits)
    codes, indices = reference.lfq_quantize(z, bits or [z.shape[1]])
    assert got.codes.dtype == z.dtype and got.codes.shape == z.shape
    assert torch.equal(got.codes, codes)
    if bits is None:
        assert got.indices.dtype == torch.int64 and got.indices.shape == (z.shape[0],)
        assert torch.equal(got.indices, indices[0])
    else:
        assert len(got.indices) == len(bits)
        for g, ref in zip(got.indices, indices, strict=True):
            assert torch.equal(g, ref)
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", KS, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("n", NS, ids=lambda n: f"N{n}")
def test_bit_exact(n, k, dtype):
    z = specials(torch.randn(n, k).to(dtype)) if n else torch.randn(n, k).to(dtype)
    got = check_exact(z)
    if n:
        assert int(got.indices.min()) >= 0 and int(got.indices.max()) < 2**k
        assert set(got.codes.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "layout",
    ["transposed", "row-step-3", "channel-slice", "expanded-rows", "expanded-channel"],
)
def test_non_contiguous(layout, dtype):
    k = 18
    if layout == "transposed":
        z = torch.randn(k, 513).to(dtype).t()
    elif layout == "row-step-3":
        z = torch.randn(3 * 257, k).to(dtype)[::3]
    elif layout == "channel-slice":
        z = torch.randn(300, 40).to(dtype)[:, 5 : 5 + k]
    elif layout == "expanded-rows":
        z = torch.randn(1, k).to(dtype).expand(77, k)
    else:
        z = torch.randn(77, 1).to(dtype).expand(77, k)
    assert not z.is_contiguous()
    check_exact(z)


@pytest.mark.parametrize("bits", [[6, 12], [9, 9], [3, 4, 11], [18], [1] * 18], ids=lambda b: "-".join(map(str, b)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_factorized(bits, dtype):
    z = specials(torch.randn(1001, 18).to(dtype))
    got = check_exact(z, bits)
    # Each group LSB-first over its own channels: index_g = sum_i (z[:, off + i] > 0) << i.
    offset = 0
    for index, b in zip(got.indices, bits, strict=True):
        manual = sum(((z[:, offset + i] > 0).long() << i) for i in range(b))
        assert torch.equal(index, manual)
        offset += b
    # The full index is the groups' indices stacked most-significant last.
    full = ops.lfq_quantize(z).indices
    acc, shift = torch.zeros_like(full), 0
    for index, b in zip(got.indices, bits, strict=True):
        acc += index << shift
        shift += b
    assert torch.equal(acc, full)


def test_documented_example():
    codes, idx = ops.lfq_quantize(torch.tensor([[0.3, -1.0, 2.0]]))
    assert codes.tolist() == [[1.0, -1.0, 1.0]] and idx.tolist() == [5]


def test_zero_sign_and_nan_give_minus_one():
    z = torch.tensor([[0.0, -0.0, float("nan"), 1e-45, -1e-45, float("inf"), -float("inf")]])
    codes, idx = ops.lfq_quantize(z)
    assert codes.tolist() == [[-1.0, -1.0, -1.0, 1.0, -1.0, 1.0, -1.0]]
    assert idx.item() == (1 << 3) | (1 << 5)


def test_k62_top_bit():
    z = -torch.ones(2, 62)
    z[0, 61] = 1.0
    z[1] = 1.0
    _, idx = ops.lfq_quantize(z)
    assert idx.tolist() == [1 << 61, (1 << 62) - 1]


def test_no_gradient_flows():
    z = torch.randn(8, 18, requires_grad=True)
    codes, _ = ops.lfq_quantize(z)
    # Straight-through is the caller's job: codes are a constant of z.
    (z + (codes - z).detach()).sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
