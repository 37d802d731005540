"""Property tests: random shapes, strides, dtypes and hostile values never crash and keep every output defined."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from magvit2 import ops
from magvit2.ops import reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
SPECIAL = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45, -1e-45, 6e4, -6e4, 1e38, -1e38, 1e-8]


@st.composite
def latents(draw, max_k=62, max_n=300):
    n = draw(st.integers(0, max_n))
    k = draw(st.integers(1, max_k))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"]))
    base = torch.randn(n, k, dtype=torch.float64) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    if n:
        count = draw(st.integers(0, min(n * k, 50)))
        flat = base.view(-1)
        for _ in range(count):
            flat[draw(st.integers(0, n * k - 1))] = draw(st.sampled_from(SPECIAL))
    z = base.to(dtype)  # fp16/bf16 overflow to +-inf on purpose
    if layout == "transposed":
        z = z.t().contiguous().t()
    elif layout == "strided":
        z = torch.cat([z, z], dim=1)[:, ::2]
    elif layout == "expanded" and n:
        z = z[:1].expand(n, k)
    return z


@settings(max_examples=150, deadline=None)
@given(z=latents())
def test_quantize_matches_reference(z):
    codes, indices = ops.lfq_quantize(z)
    ref_codes, ref_indices = reference.lfq_quantize(z, [z.shape[1]])
    assert torch.equal(codes, ref_codes) and torch.equal(indices, ref_indices[0])
    if z.shape[0]:
        assert int(indices.min()) >= 0 and int(indices.max()) < 2 ** z.shape[1]


@settings(max_examples=60, deadline=None)
@given(z=latents(max_k=40), data=st.data())
def test_factorized_matches_reference(z, data):
    k = z.shape[1]
    cuts = sorted(data.draw(st.sets(st.integers(1, k - 1), max_size=4)) if k > 1 else [])
    bits = [b - a for a, b in zip([0, *cuts], [*cuts, k], strict=True)]
    _, groups = ops.lfq_quantize(z, bits)
    _, ref = reference.lfq_quantize(z, bits)
    assert len(groups) == len(bits)
    for g, r in zip(groups, ref, strict=True):
        assert torch.equal(g, r)


@settings(max_examples=60, deadline=None)
@given(z=latents(max_k=14, max_n=200), t=st.sampled_from([0.5, 1.0, 100.0]), eps=st.sampled_from([0.0, 1e-5]))
def test_entropy_defined(z, t, eps):
    z = z.detach().requires_grad_()
    per_sample, codebook = ops.lfq_entropy(z, t, eps)
    finite = bool(torch.isfinite(z.double()).all())
    if finite:
        bound = z.shape[1] * math.log(2) * (1 + 1e-5) + 1e-6
        assert 0 <= per_sample.item() <= bound
        if eps == 0.0:
            assert -1e-6 <= codebook.item() <= bound
        (per_sample - codebook).backward()
        assert z.grad is not None and torch.isfinite(z.grad.double()).all()
    else:
        # NaN/Inf latents: no crash, results of the right shape and dtype (NaN may propagate).
        assert per_sample.shape == () and codebook.shape == ()
        (per_sample - codebook).backward()
        assert z.grad.shape == z.shape
