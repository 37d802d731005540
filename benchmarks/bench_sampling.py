"""Factorized sampling step at B = 64 rows with classifier-free guidance: the fused op vs the official path
(combine, temperature, sort-based top-k/top-p filtering, softmax, torch.multinomial), for the 64-way and the
4096-way sub-token, with and without filtering, and over nucleus widths: logits of scale {0.25, 1, 2, 4} (the
nucleus from most of the row to a few tokens) with top-p {0.5, 0.9, 0.96, 0.99} and top-k {50, 500}, V in
{64, 4096, 2^18} (B = 8 at 2^18: the official path sorts 2^18 logits per row, seconds a call at B = 64). Ratios are
medians of interleaved runs in one process, on one thread; "slowest / fastest" is ours across the widths of one V.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import FULL, interleaved

from magvit2 import ops


def official_filter(logits, top_k, top_p):
    """The official top_k_top_p_filtering (gpt.py, min_tokens_to_keep 1): writes -inf into `logits` in place through
    boolean indexing and returns it."""
    if top_k > 0:
        kth = torch.topk(logits, min(max(top_k, 1), logits.size(-1)))[0][..., -1, None]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        remove = torch.cumsum(sorted_logits.softmax(dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = 0
        logits[remove.scatter(1, sorted_idx, remove)] = float("-inf")
    return logits


def official_step(cond, uncond, cfg, temperature, top_k, top_p):
    """The official sampler's per-sub-token work: CFG combine, then gpt.py sample_from_logits (/ temperature,
    top_k_top_p_filtering when a filter is on, softmax, multinomial)."""
    logits = (uncond + (cond - uncond) * cfg) / temperature
    if top_k > 0 or top_p < 1.0:
        logits = official_filter(logits, top_k, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1)[:, 0]


CASES = [(64, 0, 1.0), (4096, 0, 1.0), (4096, 0, 0.96)] + ([(4096, 50, 0.96)] if FULL else [])


@pytest.mark.parametrize("vocab, top_k, top_p", CASES, ids=lambda v: str(v))
def test_sampling_vs_official(vocab, top_k, top_p, ratio):
    rows = 64  # the acceptance size; B = 256 CFG pairs are the GPU case
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(rows, vocab, generator=g) * 4, torch.randn(rows, vocab, generator=g) * 4
    ours = ops.sample_tokens(cond, uncond=uncond, cfg_scale=1.9, temperature=1.0, top_k=top_k, top_p=top_p, seed=1)
    assert ours.shape == (rows,) and bool(((ours >= 0) & (ours < vocab)).all())
    times = interleaved(
        {
            "ours": lambda: ops.sample_tokens(
                cond, uncond=uncond, cfg_scale=1.9, temperature=1.0, top_k=top_k, top_p=top_p, seed=1
            ),
            "official": lambda: official_step(cond, uncond, 1.9, 1.0, top_k, top_p),
        },
        rounds=20 if FULL else 3,
    )
    name = f"sample B={rows} V={vocab} k={top_k} p={top_p} cfg"
    ratio(name, "official path / ours (time)", times["official"] / times["ours"], ">= 10 on GPU")
    ratio(name, "ours ms (context)", times["ours"] * 1e3)


SCALES = [0.25, 1.0, 2.0, 4.0]
TOP_P = [0.5, 0.9, 0.96, 0.99]
TOP_K = [50, 500]
WIDTH_SIZES = [(64, 64), (64, 4096), (8, 2**18)] if FULL else [(64, 4096)]


@pytest.fixture
def one_thread():
    default = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(default)


def _guided(rows, vocab, scale):
    g = torch.Generator().manual_seed(0)
    return torch.randn(rows, vocab, generator=g) * scale, torch.randn(rows, vocab, generator=g) * scale


@pytest.mark.parametrize("rows, vocab", WIDTH_SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", ["top_p", "top_k"])
def test_sampling_over_nucleus_widths(rows, vocab, kind, ratio, one_thread):
    """Every (scale, filter) pair of one V in one interleaved run, so that ours' slowest / fastest compares like
    with like; each pair also against the official path."""
    filters = [(0, p) for p in TOP_P] if kind == "top_p" else [(k, 1.0) for k in TOP_K if k < vocab]
    scales = SCALES if FULL else [0.25, 4.0]
    fns, names = {}, {}
    for scale, (top_k, top_p) in itertools.product(scales, filters):
        cond, uncond = _guided(rows, vocab, scale)
        ours = ops.sample_tokens(cond, uncond=uncond, cfg_scale=1.9, top_k=top_k, top_p=top_p, seed=1)
        assert bool(((ours >= 0) & (ours < vocab)).all())
        key = f"s={scale} k={top_k} p={top_p}"
        names[key] = f"sample B={rows} V={vocab} scale={scale} k={top_k} p={top_p} cfg 1thr"
        fns[key + " ours"] = lambda c=cond, u=uncond, k=top_k, p=top_p: ops.sample_tokens(
            c, uncond=u, cfg_scale=1.9, top_k=k, top_p=p, seed=1
        )
        fns[key + " official"] = lambda c=cond, u=uncond, k=top_k, p=top_p: official_step(c, u, 1.9, 1.0, k, p)
    rounds = (5 if vocab > 4096 else 20) if FULL else 3
    times = interleaved(fns, rounds=rounds)
    for key, name in names.items():
        target = ">= 10" if kind == "top_p" and vocab >= 4096 else ""
        ratio(name, "official path / ours (time)", times[key + " official"] / times[key + " ours"], target)
        ratio(name, "ours ms (context)", times[key + " ours"] * 1e3)
        ratio(name, "official ms (context)", times[key + " official"] * 1e3)
    ours = [times[key + " ours"] for key in names]
    flat = "<= 1.5" if kind == "top_p" and vocab == 4096 else ""
    ratio(f"sample B={rows} V={vocab} {kind} widths", "ours slowest / fastest (time)", max(ours) / min(ours), flat)
