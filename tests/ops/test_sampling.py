"""sample_tokens: the C++ kernel equals the reference token for token; the draws follow the filtered softmax."""

import math

import pytest
import torch

from magvit2 import ops
from magvit2.ops import backends
from magvit2.ops.reference import sampling as ref


def _ref(logits, uncond=None, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, seed=0, offset=0):
    return ref.sample_tokens(logits, uncond, cfg_scale, temperature, top_k, top_p, seed, offset)


def test_cpu_kernel_serves_the_op():
    assert backends.serving("sample_tokens", "cpu") == "cpu_ext"


SETTINGS = [
    dict(),
    dict(temperature=0.7),
    dict(temperature=1.3, top_k=50),
    dict(top_p=0.9),
    dict(top_k=100, top_p=0.8, temperature=1.1),
    dict(top_k=1),
    dict(top_k=5000),
    dict(top_p=0.01),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "rows, vocab",
    [(1, 1), (3, 2), (5, 1001), (1, 64), (7, 64), (64, 64), (1, 4096), (7, 4096), (64, 4096), (1, 2**18), (7, 2**18)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("cfg", [None, 1.9], ids=["nocfg", "cfg1.9"])
def test_kernel_matches_reference_exactly(rows, vocab, dtype, cfg):
    g = torch.Generator().manual_seed(rows * vocab)
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
    uncond = (torch.randn(rows, vocab, generator=g) * 3).to(dtype) if cfg else None
    for i, s in enumerate(SETTINGS):
        kw = dict(s, cfg_scale=cfg or 1.0, seed=1234 + i, offset=7 * i)
        got = ops.sample_tokens(logits, uncond=uncond, **kw)
        want = _ref(logits, uncond, **kw)
        assert got.dtype == torch.int64 and got.shape == (rows,)
        assert torch.equal(got, want), (s, got, want)
        assert bool(((got >= 0) & (got < vocab)).all())


def test_non_contiguous_and_ties():
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(64, 40, generator=g)
    logits = wide.t()  # (40, 64) non-contiguous
    assert torch.equal(ops.sample_tokens(logits, seed=3), _ref(logits.contiguous(), seed=3))
    tied = torch.zeros(4, 10)
    tied[:, [2, 7]] = 5.0
    assert torch.equal(ops.sample_tokens(tied, top_k=1), torch.full((4,), 2))  # first maximum
    for k in (1, 2, 3):  # threshold ties are kept: both 5.0 entries survive top-k 1 ... but k=1 is greedy
        assert torch.equal(ops.sample_tokens(tied, top_k=k, seed=k), _ref(tied, top_k=k, seed=k))


@pytest.mark.parametrize("vocab", [64, 1001, 4096], ids=lambda v: f"V{v}")
def test_ties_and_masked_tokens_match_the_reference(vocab):
    # integer logits: many ties at the top-k threshold and in the nucleus order; -inf rows shorter than k
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(6, vocab, generator=g).mul(2).round()
    logits[1, 40:] = float("-inf")  # 40 finite tokens
    logits[2, ::3] = float("-inf")
    logits[3] = 0.0  # one value
    for i, (k, p) in enumerate([(2, 1.0), (8, 1.0), (50, 1.0), (50, 0.9), (0, 0.5), (0, 0.97), (vocab // 3, 0.8)]):
        got = ops.sample_tokens(logits, top_k=k, top_p=p, seed=i, offset=vocab)
        assert torch.equal(got, _ref(logits, top_k=k, top_p=p, seed=i, offset=vocab)), (k, p)


def test_draws_follow_the_softmax():
    n = 40000
    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0), -30.0]]).repeat(n, 1)
    freq = torch.bincount(ops.sample_tokens(logits, seed=11), minlength=4).double() / n
    torch.testing.assert_close(freq, torch.tensor([1 / 6, 2 / 6, 3 / 6, 0.0], dtype=torch.float64), atol=0.01, rtol=0)
    hot = torch.bincount(ops.sample_tokens(logits, temperature=0.5, seed=12), minlength=4).double() / n
    torch.testing.assert_close(hot, torch.tensor([1 / 14, 4 / 14, 9 / 14, 0.0], dtype=torch.float64), atol=0.01, rtol=0)


def test_top_k_and_top_p_filter_as_the_official_sampler():
    n = 20000
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log()[None].repeat(n, 1)
    top2 = torch.bincount(ops.sample_tokens(logits, top_k=2, seed=1), minlength=3).double() / n
    assert top2[2] == 0 and abs(top2[0] - 0.625) < 0.015  # renormalised 0.5 / 0.8
    # official rule: keep a token while the mass before it (sorted descending) is <= p: 0 and 0.5 <= 0.6, 0.8 > 0.6
    nucleus = torch.bincount(ops.sample_tokens(logits, top_p=0.6, seed=2), minlength=3).double() / n
    assert nucleus[2] == 0 and abs(nucleus[0] - 0.625) < 0.015
    only_first = ops.sample_tokens(logits, top_p=0.4, seed=3)
    assert bool((only_first == 0).all())


def test_classifier_free_guidance_combination():
    g = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(50, 64, generator=g), torch.randn(50, 64, generator=g)
    got = ops.sample_tokens(cond, uncond=uncond, cfg_scale=1.9, top_k=1)
    assert torch.equal(got, (uncond + (cond - uncond) * 1.9).argmax(dim=1))
    same = ops.sample_tokens(cond, uncond=uncond, cfg_scale=1.0, seed=9)
    assert torch.equal(same, ops.sample_tokens(cond, seed=9))  # scale 1 leaves the conditional logits


def test_seed_and_offset_select_the_stream():
    logits = torch.zeros(1000, 4096)
    a = ops.sample_tokens(logits, seed=1, offset=0)
    assert torch.equal(a, ops.sample_tokens(logits, seed=1, offset=0))
    assert (a != ops.sample_tokens(logits, seed=1, offset=1)).float().mean() > 0.99
    assert (a != ops.sample_tokens(logits, seed=2, offset=0)).float().mean() > 0.99
    assert a.unique().numel() > 800  # uniform logits: spread over the vocabulary


def test_draws_pass_a_chi_square_test_against_the_filtered_softmax():
    from scipy.stats import chisquare

    g = torch.Generator().manual_seed(8)
    n, vocab = 100_000, 16
    row = torch.randn(vocab, generator=g) * 1.5
    for top_k, top_p in ((0, 1.0), (10, 1.0), (0, 0.9), (10, 0.8)):
        x = row.double() / 1.2
        keep = torch.ones(vocab, dtype=torch.bool)
        if top_k:
            keep &= x >= x.topk(top_k).values[-1]
        p = torch.where(keep, (x - x.max()).exp(), torch.zeros(()))
        if top_p < 1:
            order = torch.argsort(x, descending=True)
            before = torch.cat([torch.zeros(1, dtype=torch.float64), p[order].cumsum(0)[:-1]])
            keep[order] &= before <= top_p * p.sum()
            p = torch.where(keep, p, torch.zeros(()))
        expected = (p / p.sum()).numpy() * n
        drawn = ops.sample_tokens(row[None].repeat(n, 1), temperature=1.2, top_k=top_k, top_p=top_p, seed=21)
        counts = torch.bincount(drawn, minlength=vocab).numpy()
        assert counts[expected == 0].sum() == 0  # filtered tokens are never drawn
        mask = expected > 0
        stat = chisquare(counts[mask], expected[mask])
        assert stat.pvalue > 1e-3, (top_k, top_p, stat)


def test_top_k_one_is_argmax():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(64, 4096, generator=g)
    assert torch.equal(ops.sample_tokens(logits, top_k=1, seed=5), logits.argmax(dim=1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(logits=torch.zeros(2, 3, 4)), "logits must be a floating"),
        (dict(logits=torch.zeros(2, 3, dtype=torch.long)), "logits must be a floating"),
        (dict(uncond=torch.zeros(3, 3)), "uncond must match"),
        (dict(temperature=-1.0), "temperature must be"),
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(logits=torch.tensor([[0.0, float("nan")], [0.0, 1.0]])), "row 0 has NaN logits"),
        (dict(top_k=-2), "top_k must be"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(cfg_scale=float("nan")), "cfg_scale must be"),
        (dict(seed=2**70), "seed must be a 64-bit int"),
        (dict(logits=torch.tensor([[0.0, 1.0], [float("-inf"), float("-inf")]])), "row 1 has no finite logit"),
        (dict(logits=torch.tensor([[0.0, 1.0], [float("inf"), 0.0]])), "row 1 has an infinite logit"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    args = dict(logits=torch.zeros(2, 3))
    args.update(kwargs)
    logits = args.pop("logits")
    with pytest.raises(ValueError, match=message):
        ops.sample_tokens(logits, **args)


def test_a_logit_infinite_in_both_inputs_is_an_error_in_both_backends():
    logits, uncond = torch.zeros(3, 5), torch.zeros(3, 5)
    logits[1, 2] = uncond[1, 2] = float("-inf")  # guidance: -inf + (-inf - -inf) * s = NaN
    for fn in (ops.sample_tokens, _ref):
        with pytest.raises(ValueError, match="row 1 has NaN logits after guidance"):
            fn(logits, uncond=uncond, cfg_scale=1.9)


def test_top_p_near_one_walks_past_the_candidates():
    # p within rounding of 1 keeps tokens far below the maximum (2923 of 4096 in row 0 with p = 1 - 1e-15): the
    # cutoff sits in the far buckets, where the masses are within rounding of the limit
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(16, 4096, generator=g) * 20
    for p in (1 - 1e-15, 0.999999, 0.99):
        for seed in range(3):
            got = ops.sample_tokens(logits, top_p=p, seed=seed)
            assert torch.equal(got, _ref(logits, top_p=p, seed=seed)), p


def test_opcheck_and_compile():
    logits, uncond = torch.randn(8, 64), torch.randn(8, 64)
    torch.library.opcheck(torch.ops.magvit2.sample_tokens.default, (logits, uncond, 1.5, 1.0, 10, 0.9, 3, 1))
    torch.library.opcheck(torch.ops.magvit2.sample_tokens.default, (logits, None, 1.0, 0.5, 1, 1.0, 0, 0))

    @torch.compile(fullgraph=True)
    def step(x, u):
        return ops.sample_tokens(x * 2, uncond=u, cfg_scale=1.9, top_k=5, seed=1, offset=2)

    assert torch.equal(
        step(logits, uncond), ops.sample_tokens(logits * 2, uncond=uncond, cfg_scale=1.9, top_k=5, seed=1, offset=2)
    )


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.0, 8.0], ids=lambda s: f"std{s}")
@pytest.mark.parametrize("top_p", [0.5, 0.96, 0.999999], ids=lambda p: f"p{p}")
def test_top_p_nucleus_of_any_width_matches_the_reference(scale, top_p):
    """The nucleus from a few tokens (std 8) to most of the row (std 0.3): the cutoff guessed from the binned mass
    (refined in crowded buckets), its exact check and the draw by binary search of the running sums; signed zeros
    and repeated values order as equal logits (by index)."""
    g = torch.Generator().manual_seed(int(scale * 10))
    logits = torch.randn(16, 4096, generator=g) * scale
    logits[0, :2048] = 0.0
    logits[0, 1::4] = -0.0
    logits[1] = (logits[1] * 4).round() / 4  # many ties
    for i in range(3):
        kw = dict(top_p=top_p, seed=i, offset=3 * i)
        assert torch.equal(ops.sample_tokens(logits, **kw), _ref(logits, **kw)), kw


def _nucleus_by_definition(x: torch.Tensor, top_p: float) -> set[int]:
    """The top-p rule written out for one row, O(V^2): token i stays iff the mass of the tokens before it (x
    descending, ties lower index first; -0.0 == +0.0), summed one by one in index order in float64, is <= p * Z."""
    w = ref.exp_det(x - x.max()).double().tolist()
    xs = x.tolist()
    kept = [i for i in range(len(xs)) if w[i] > 0]
    z = 0.0
    for i in kept:
        z += w[i]
    out = set()
    for i in kept:
        mass = 0.0
        for j in kept:
            if xs[j] > xs[i] or (xs[j] == xs[i] and j < i):
                mass += w[j]
        if mass <= top_p * z:
            out.add(i)
    return out


def _tie_rows() -> torch.Tensor:
    g = torch.Generator().manual_seed(20)
    rows = torch.randn(6, 40, generator=g).mul(1.5).round() / 2  # many repeated values
    rows[1, ::2] = -0.0
    rows[1, 1::2] = 0.0  # one value, two signs: ordered by index
    rows[2, 5:25] = float("-inf")
    rows[3] = torch.tensor([0.0, -0.0] * 20)
    rows[4, :4] = 3.0
    rows[5] = torch.randn(40, generator=g) * 0.05  # a nucleus of most of the row
    return rows


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.75, 0.96, 0.9999])
def test_nucleus_is_the_mass_threshold_of_its_definition(top_p):
    rows = _tie_rows()
    n = 3000
    for r, row in enumerate(rows):
        want = _nucleus_by_definition(row, top_p)
        keep = ref.nucleus(row[None], ref.exp_det(row - row.max())[None].double(), torch.isfinite(row)[None], top_p)
        assert set(keep[0].nonzero()[:, 0].tolist()) == want, r
        drawn = ops.sample_tokens(row[None].repeat(n, 1), top_p=top_p, seed=r)
        assert torch.equal(drawn, _ref(row[None].repeat(n, 1), top_p=top_p, seed=r))
        assert set(drawn.tolist()) <= want
        if len(want) <= 8:
            assert set(drawn.tolist()) == want  # each of a few tokens is drawn in 3000 tries


def test_mass_exactly_at_the_limit_keeps_the_token():
    # four equal weights, p = 1/2: M = 0, 1, 2, 3 against p * Z = 2, so the third token (M == limit) stays; signed
    # zeros are one value, ordered by index
    for row in (torch.zeros(4), torch.tensor([-0.0, 0.0, -0.0, 0.0]), torch.tensor([0.0, -0.0, 0.0, -0.0])):
        logits = row[None].repeat(4000, 1)
        drawn = ops.sample_tokens(logits, top_p=0.5, seed=3)
        assert set(drawn.tolist()) == {0, 1, 2}
        assert torch.equal(drawn, _ref(logits, top_p=0.5, seed=3))
        assert torch.equal(
            ops.sample_tokens(logits, top_k=3, top_p=0.5, seed=4), _ref(logits, top_k=3, top_p=0.5, seed=4)
        )


def test_a_cutoff_within_rounding_of_the_limit_is_exact():
    # weights 1 and ~0.5 first in index order, then 1000 of ~2^-60: summed in index order the small ones vanish
    # (Z = 1.5), summed in any other order they add ~9e-16. With p = 1 - 1e-16 the first small token's mass before
    # (1.5) passes p * Z, though an estimate of Z from per-bucket sums says otherwise: the kernel's guess is then
    # wrong and its exact check must find the cutoff the rule gives (the first two tokens)
    row = torch.full((1002,), -60 * math.log(2.0))
    row[0], row[1] = 0.0, -math.log(2.0)
    logits = row[None].repeat(2000, 1)
    top_p = 1 - 1e-16
    assert _nucleus_by_definition(row, top_p) == {0, 1}
    drawn = ops.sample_tokens(logits, top_p=top_p, seed=5)
    assert set(drawn.tolist()) == {0, 1}
    assert torch.equal(drawn, _ref(logits, top_p=top_p, seed=5))
    shuffled = logits[:, torch.randperm(1002, generator=torch.Generator().manual_seed(0))]  # small tokens first too
    assert torch.equal(ops.sample_tokens(shuffled, top_p=top_p, seed=6), _ref(shuffled, top_p=top_p, seed=6))


@pytest.mark.parametrize("scale, top_p", [(0.2, 0.96), (0.2, 0.5), (3.0, 0.9), (3.0, 0.3)], ids=str)
def test_wide_and_narrow_nuclei_pass_a_chi_square_test_against_sort_based_filtering(scale, top_p):
    """The official, sort-based filter (keep while the mass before, summed in sorted order, is <= p) on a row with no
    mass within rounding of the limit gives the same nucleus, so the draws must follow its softmax: ~60 of 64
    tokens (scale 0.2, p 0.96) down to a few (scale 3, p 0.3)."""
    from scipy.stats import chisquare

    g = torch.Generator().manual_seed(int(scale * 100 + top_p * 1000))
    n, vocab = 200_000, 64
    row = torch.randn(vocab, generator=g) * scale
    x = row.double()
    p = (x - x.max()).exp()
    order = torch.argsort(x, descending=True)
    before = torch.cat([torch.zeros(1, dtype=torch.float64), p[order].cumsum(0)[:-1]])
    assert bool(((before - top_p * p.sum()).abs() > 1e-9).all())  # no token near the cut
    keep = torch.zeros(vocab, dtype=torch.bool)
    keep[order] = before <= top_p * p.sum()
    p = torch.where(keep, p, torch.zeros(()))
    expected = (p / p.sum()).numpy() * n
    drawn = ops.sample_tokens(row[None].repeat(n, 1), top_p=top_p, seed=22)
    counts = torch.bincount(drawn, minlength=vocab).numpy()
    assert counts[expected == 0].sum() == 0
    assert (expected > 0).sum() > (50 if top_p > 0.9 and scale < 1 else 0)
    stat = chisquare(counts[expected > 0], expected[expected > 0])
    assert stat.pvalue > 1e-3, stat
