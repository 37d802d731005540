"""Factorized sampling step at B = 64 rows with classifier-free guidance: the fused op vs the official path
(combine, temperature, sort-based top-k/top-p filtering, softmax, torch.multinomial), for the 64-way and the
4096-way sub-token, with and without filtering. Ratios are medians of interleaved runs in one process.
"""

from __future__ import annotations

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
