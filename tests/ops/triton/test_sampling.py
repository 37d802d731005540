"""Triton sample_tokens: tokens identical to the plain-torch reference; its determinism rules checked one by one."""

import math
import random

import pytest
import torch
import triton
import triton.language as tl

from magvit2.ops.reference import sampling as ref
from magvit2.ops.triton import sampling
from magvit2.ops.triton.sampling_rules import exp_det, join_u64, seq_prefix, split_u64, uniform


@triton.jit
def _prefix_kernel(w, p, total, n, WIN: tl.constexpr):
    offs = tl.arange(0, WIN)
    s = tl.zeros([], tl.float64)
    for c0 in range(0, n, WIN):
        j = c0 + offs
        out, s = seq_prefix(tl.load(w + j, mask=j < n, other=0.0), s, WIN)
        tl.store(p + j, out, mask=j < n)
    tl.store(total, s)


@triton.jit
def _rules_kernel(d, w, n, seed_hi, seed_lo, offset_hi, offset_lo, u, rows, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(w + offs, exp_det(tl.load(d + offs, mask=offs < n, other=0.0)), mask=offs < n)
    seed, offset = join_u64(seed_hi, seed_lo), join_u64(offset_hi, offset_lo)
    tl.store(u + offs, uniform(seed, offset, offs), mask=offs < rows)


def _sequential(w: torch.Tensor) -> torch.Tensor:
    out, s = [], 0.0
    for v in w.tolist():
        s += v
        out.append(s)
    return torch.tensor(out, dtype=torch.float64)


def _prefix_cases() -> dict[str, torch.Tensor]:
    rng = random.Random(1)
    f64 = dict(dtype=torch.float64)
    return {
        "ones": torch.ones(200, **f64),  # crossings at every power of 2
        "half-ulp-ties": torch.tensor([1.0, 2**-53, 2**-53, 2**-52, 3 * 2**-53, 0.5, 0.25, 2**-54, 1.5] * 8, **f64),
        "tiny-first": torch.cat([torch.tensor([1e-300, 1e-200, 1e-100], **f64), torch.rand(120, **f64)]),
        "zeros-between": torch.where(torch.rand(200) < 0.5, 0.0, torch.rand(200, **f64)),
        "softmax-weights": torch.exp(-torch.rand(300, **f64) * 30),
        "powers-of-2": torch.tensor([2.0 ** -rng.randint(0, 60) for _ in range(200)], **f64),
        "near-cutoff": torch.exp(torch.tensor([-87.0, -86.5, -1.0, -60.0, 0.0] * 20)).double(),  # float32 weights
    }


@pytest.mark.parametrize("case", list(_prefix_cases()))
def test_seq_prefix_is_the_sequential_float64_sum(case, device):
    w = _prefix_cases()[case]
    for win in (16, 64):
        p = torch.empty_like(w, device=device)
        total = torch.empty(1, dtype=torch.float64, device=device)
        _prefix_kernel[(1,)](w.to(device), p, total, w.numel(), WIN=win)
        want = _sequential(w)
        assert torch.equal(p.cpu(), want) and torch.equal(torch.cumsum(w, 0), want)
        assert total.item() == want[-1].item()


def test_exp_det_and_uniform_bit_exact(device):
    n = torch.arange(-126, 0, dtype=torch.float32)
    d = torch.cat(
        [
            torch.tensor([0.0, -0.0, -1e-40, -1e-30, -1e-7, -0.5, -1.0, -86.99, -87.0, -87.01, -88.0, -1e4]),
            torch.tensor([float("-inf"), -torch.finfo(torch.float32).max, -torch.finfo(torch.float32).tiny]),
            (n + 0.5) / ref.INV_LN2,  # d / ln 2 near the rounding ties of n
            n * ref.LN2_HI,  # r near 0
            -torch.rand(400) * 100,
            -torch.rand(200) * 2,
        ]
    )
    w = torch.empty_like(d, device=device)
    rows = 64
    for seed, offset in ((0, 0), (-1, 2**63 - 1), (1234, 7), (-(2**63), 99)):
        u = torch.empty(rows, dtype=torch.float64, device=device)
        _rules_kernel[(1,)](d.to(device), w, d.numel(), *split_u64(seed), *split_u64(offset), u, rows, BLOCK=1024)
        want = torch.tensor([ref.uniform(seed, offset, r) for r in range(rows)], dtype=torch.float64)
        assert torch.equal(u.cpu(), want)
    assert torch.equal(w.cpu().view(torch.int32), ref.exp_det(d).view(torch.int32))


def _check(logits, uncond=None, cfg_scale=1.0, settings=(dict(),), **tiles):
    for i, setting in enumerate(settings):
        kw = dict(cfg_scale=cfg_scale, temperature=1.0, top_k=0, top_p=1.0, seed=1234 + i, offset=7 * i)
        kw.update(setting)
        got = sampling.sample_tokens(logits, uncond, **kw, **tiles)
        want = ref.sample_tokens(logits.cpu(), uncond.cpu() if uncond is not None else None, **kw)
        assert got.dtype == torch.int64 and got.shape == (logits.shape[0],)
        assert torch.equal(got.cpu(), want), (setting, got, want)


SETTINGS = [
    dict(),
    dict(temperature=0.7, top_k=10),
    dict(top_p=0.9),
    dict(top_k=20, top_p=0.8, temperature=1.1),
    dict(top_k=1),
    dict(top_k=5000),
    dict(top_p=0.01),
]


@pytest.mark.parametrize("cfg", [None, 1.9], ids=["nocfg", "cfg1.9"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_tokens_identical_vocab64(dtype, cfg, device):
    g = torch.Generator().manual_seed(64)
    logits = (torch.randn(2, 64, generator=g) * 3).to(dtype).to(device)
    uncond = (torch.randn(2, 64, generator=g) * 3).to(dtype).to(device) if cfg else None
    settings = SETTINGS if dtype == torch.float32 else SETTINGS[1:4]
    _check(logits, uncond, cfg or 1.0, settings)


def test_tokens_identical_vocab4096(device):
    g = torch.Generator().manual_seed(4096)
    logits, uncond = (torch.randn(2, 4096, generator=g) * 3).to(device), (torch.randn(2, 4096, generator=g) * 3)
    _check(logits, settings=[dict(), dict(top_k=100)])
    _check(logits, uncond.to(device), 1.9, settings=[dict(top_p=0.9, temperature=1.1)])


def test_nucleus_across_vector_steps(device):
    """Flat logits with ties: the nucleus spans many vector steps of 32 and tied keys sit at the cutoff."""
    flat = torch.zeros(1, 100)
    flat[:, ::7] = 0.5
    flat[:, 50:] -= 1.0
    _check(flat.to(device), settings=[dict(top_p=0.9), dict(top_p=0.5, top_k=60)], block=32)


def test_ties_infinities_and_signed_zeros(device):
    tied = torch.zeros(2, 10)
    tied[:, [2, 7]] = 5.0
    _check(tied.to(device), settings=[dict(top_k=k) for k in (1, 2, 3)] + [dict(top_p=0.5)])
    odd = torch.randn(3, 50)
    odd[:, 10:40] = float("-inf")
    odd[1] = -0.0
    odd[1, 5] = 0.0  # +0 and -0 compare equal: first-index order among them, as the reference's stable sort
    odd[2, 3] = -800.0  # weight 0 after exp_det: never drawn
    _check(odd.to(device), settings=[dict(), dict(top_k=2), dict(top_p=0.3), dict(top_k=1), dict(top_k=25)])


def test_non_contiguous_and_tiny_vocabularies(device):
    wide = torch.randn(64, 3)
    _check(wide.t().to(device), settings=[dict(), dict(top_p=0.7)])  # (3, 64), strides (1, 3)
    _check(torch.randn(3, 1).to(device), settings=[dict(), dict(top_p=0.5), dict(top_k=1)])
    _check(torch.randn(2, 2, dtype=torch.float64).to(device), settings=[dict(top_k=1), dict(top_p=0.6)])


@pytest.mark.parametrize(
    "row, message",
    [
        (torch.tensor([0.0, float("nan")]), "row 1 has NaN logits"),
        (torch.tensor([float("-inf"), float("-inf")]), "row 1 has no finite logit"),
        (torch.tensor([float("inf"), 0.0]), "row 1 has an infinite logit"),
    ],
)
def test_bad_rows_raise_as_the_reference(row, message, device):
    logits = torch.stack([torch.tensor([0.0, 1.0]), row]).to(device)
    with pytest.raises(ValueError, match=message):
        sampling.sample_tokens(logits, None, 1.0, 1.0, 0, 1.0, 0, 0)
    with pytest.raises(ValueError, match=message):
        ref.sample_tokens(logits.cpu(), None, 1.0, 1.0, 0, 1.0, 0, 0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf, interpreted
def test_guidance_nan_raises_as_the_reference(device):
    # inf - inf in the guidance (-inf in both inputs, or +inf and -inf) is reported before a row without a finite
    # logit, after a NaN input, as in the reference
    logits, uncond = torch.zeros(4, 5), torch.zeros(4, 5)
    logits[0] = float("-inf")  # guidance -inf everywhere: no finite logit
    logits[2, 2] = uncond[2, 2] = float("-inf")
    logits[3, 1], uncond[3, 1] = float("inf"), float("-inf")
    cases = [(None, "row 2 has NaN logits after guidance"), ((2, 2), "row 3 has NaN logits after guidance")]
    cases += [((1, 4), "row 1 has NaN logits$")]
    for fix, message in cases:
        if fix == (2, 2):
            logits[2, 2] = uncond[2, 2] = 0.0
        if fix == (1, 4):
            uncond[1, 4] = float("nan")
        for fn in (sampling.sample_tokens, ref.sample_tokens):
            with pytest.raises(ValueError, match=message):
                fn(logits.to(device), uncond.to(device), 1.9, 1.0, 0, 0.5, 0, 0)


def test_weights_at_the_exp_cutoff(device):
    """Wide logits: many x - max around the cutoff (-87), ties, -inf-masked tokens and a nucleus near p = 1."""
    g = torch.Generator().manual_seed(87)
    logits = (torch.randn(4, 1001, generator=g) * 30).round()
    logits[1, 40:] = float("-inf")
    logits[2, ::3] = float("-inf")
    logits[3, 0] = 0.0
    logits[3, 1:500] = -87.0  # x - max == -87: the lowest weight above the cutoff, tied
    logits[3, 500:] = torch.linspace(-87.5, -86.5, 501)
    settings = [dict(), dict(top_k=50), dict(top_p=0.9), dict(top_k=300, top_p=0.8), dict(top_p=1 - 1e-15)]
    _check(logits.to(device), settings=settings)


def test_nucleus_cut_at_and_within_rounding_of_the_limit(device):
    # M == p * Z exactly keeps the token (four equal weights, p = 1/2, signed zeros as one value); weights whose
    # index-order sum differs from any other order's by ~9e-16 right at the cut (tests/ops/test_sampling.py)
    signed = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-0.0, 0.0, -0.0, 0.0], [0.0, -0.0, 0.0, -0.0]])
    _check(signed.to(device), settings=[dict(top_p=0.5), dict(top_p=0.5, top_k=3)])
    row = torch.full((1, 1002), -60 * math.log(2.0))
    row[0, 0], row[0, 1] = 0.0, -math.log(2.0)
    _check(row.repeat(2, 1).to(device), settings=[dict(top_p=1 - 1e-16)], block=256)


def test_wide_and_narrow_nuclei(device):
    g = torch.Generator().manual_seed(21)
    logits = torch.randn(3, 512, generator=g) * torch.tensor([[0.1], [1.0], [6.0]])
    _check(logits.to(device), settings=[dict(top_p=0.99), dict(top_p=0.5), dict(top_k=300, top_p=0.9)], block=128)
