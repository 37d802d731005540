"""A long random run over the three ops: 2,000 calls with random shapes, dtypes, layouts, hostile values and
parameters (valid and invalid). Nothing crashes; every result equals the reference (discrete outputs exactly,
entropies to the dtype's tolerance); every invalid call is a ValueError naming the argument."""

import math
import random

import pytest
import torch

from magvit2 import ops
from magvit2.ops import reference
from magvit2.ops.reference import sampling as sampling_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
SPECIAL = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45, 6e4, -1e38]


def _latents(rng: random.Random, *, specials: bool) -> torch.Tensor:
    n, k = rng.choice([0, 1, 3, 17, 64, 129]), rng.choice([1, 2, 5, 10, 18])
    z = torch.randn(n, k, generator=torch.Generator().manual_seed(rng.randrange(1 << 30)), dtype=torch.float64)
    z = (z * rng.choice([1e-3, 1.0, 30.0])).to(rng.choice(DTYPES))
    if specials and n:
        for _ in range(rng.randrange(4)):
            z.view(-1)[rng.randrange(n * k)] = rng.choice(SPECIAL)
    if rng.random() < 0.3:
        z = z.t().contiguous().t()
    return z


def _quantize(rng):
    z = _latents(rng, specials=True)
    k = z.shape[1]
    bits = None
    if k > 1 and rng.random() < 0.5:
        cut = rng.randrange(1, k)
        bits = [cut, k - cut]
    if rng.random() < 0.05:  # invalid split
        with pytest.raises(ValueError, match="factorized_bits"):
            ops.lfq_quantize(z, [k + 1])
        return
    codes, indices = ops.lfq_quantize(z, bits)
    want_codes, want_indices = reference.lfq_quantize(z, bits or [k])
    assert torch.equal(codes, want_codes)
    got = indices if isinstance(indices, tuple) else (indices,)
    assert all(torch.equal(g, w) for g, w in zip(got, want_indices.unbind(0), strict=True))  # (G, N) rows


def _entropy(rng):
    z = _latents(rng, specials=False)
    t = rng.choice([1.0, 10.0, 100.0])
    if rng.random() < 0.05:
        with pytest.raises(ValueError, match="inv_temperature"):
            ops.lfq_entropy(z, inv_temperature=-t)
        return
    out = ops.lfq_entropy(z, inv_temperature=t)
    want = reference.lfq_entropy(z.double(), t, 0.0)
    tol = {torch.float64: 1e-9}.get(z.dtype, 2e-4)
    for got, exp in zip(out[:2], want[:2], strict=True):
        assert torch.allclose(got.double(), exp, rtol=tol, atol=tol), (got, exp)


def _sample(rng):
    rows, vocab = rng.choice([1, 2, 7]), rng.choice([1, 2, 64, 1001, 4096])
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    logits = (torch.randn(rows, vocab, generator=g) * rng.choice([0.1, 1.0, 8.0])).to(rng.choice(DTYPES[:3]))
    uncond = logits.roll(1, dims=1) if rng.random() < 0.5 else None
    if vocab > 1 and rng.random() < 0.2:  # a masked token (a row needs one finite logit)
        logits[rng.randrange(rows), rng.randrange(vocab)] = -float("inf")
    kw = dict(
        uncond=uncond,
        cfg_scale=rng.choice([1.0, 1.9, 4.0]),
        temperature=rng.choice([0.5, 1.0, 1.3]),
        top_k=rng.choice([0, 1, 5, 50]),
        top_p=rng.choice([1.0, 0.96, 0.5, 1e-3]),
        seed=rng.randrange(1 << 62),
        offset=rng.randrange(1000),
    )
    bad = rng.random()
    if bad < 0.1:
        arg, value = rng.choice([("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("temperature", 0.0)])
        with pytest.raises(ValueError, match=arg):
            ops.sample_tokens(logits, **{**kw, arg: value})
        return
    if bad < 0.15:
        logits[0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            ops.sample_tokens(logits, **kw)
        return
    got = ops.sample_tokens(logits, **kw)
    want = sampling_reference.sample_tokens(
        logits, uncond, kw["cfg_scale"], kw["temperature"], kw["top_k"], kw["top_p"], kw["seed"], kw["offset"]
    )
    assert torch.equal(got, want), kw


@pytest.mark.slow
def test_two_thousand_random_calls_match_the_reference():
    rng = random.Random(20261127)
    calls = [_quantize, _entropy, _sample]
    counts = dict.fromkeys(c.__name__ for c in calls)
    for name in counts:
        counts[name] = 0
    for _ in range(2000):
        call = rng.choice(calls)
        call(rng)
        counts[call.__name__] += 1
    assert min(counts.values()) > 500 and not math.isnan(sum(counts.values()))
