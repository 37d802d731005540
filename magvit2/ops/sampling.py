"""`sample_tokens`: one fused pass per row from logits to sampled token ids (the AR sampler's hot path).

The official sampler runs, per sub-token, a cond/uncond combine, a temperature divide, a full sort for top-k/top-p,
a softmax and torch.multinomial (whose stream depends on the device and on everything drawn before). This op does it
in one pass per row without a full sort, and draws from a counter-based stream: the same (logits, settings, seed,
offset) give the same tokens on every backend and in any batch split, so tests compare backends exactly and a
generation is reproducible from its seed. Semantics: magvit2/ops/reference/sampling.py.
"""

from __future__ import annotations

import math

import torch


def sample_tokens(
    logits: torch.Tensor,
    *,
    uncond: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    offset: int = 0,
) -> torch.Tensor:
    """Sample one token per row.

    logits: (R, V) float (conditional logits); uncond: optional (R, V) unconditional logits, combined as
    uncond + (logits - uncond) * cfg_scale. temperature > 0; top_k 1 is greedy; top_k 0 and top_p 1 are off;
    NaN logits are an error.
    seed/offset select the counter-based stream (use a new offset for every call of one generation).
    Returns (R,) int64.

    Example:
        >>> sample_tokens(torch.tensor([[0.0, 5.0, 1.0]]), top_k=1)
        tensor([1])
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        got = f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"sample_tokens: logits must be a floating (rows, vocab) tensor, got {got}")
    if uncond is not None and (
        not isinstance(uncond, torch.Tensor) or uncond.shape != logits.shape or uncond.dtype != logits.dtype
    ):
        raise ValueError(f"sample_tokens: uncond must match logits ({tuple(logits.shape)}, {logits.dtype})")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"sample_tokens: temperature must be a finite number > 0 (top_k=1 is greedy), got {temperature!r}"
        )
    if not (isinstance(cfg_scale, (int, float)) and math.isfinite(cfg_scale)):
        raise ValueError(f"sample_tokens: cfg_scale must be a finite number, got {cfg_scale!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"sample_tokens: top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"sample_tokens: top_p must be in (0, 1] (1 = off), got {top_p!r}")
    for name, value in (("seed", seed), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
            raise ValueError(f"sample_tokens: {name} must be a 64-bit int, got {value!r}")
    return torch.ops.magvit2.sample_tokens(
        logits, uncond, float(cfg_scale), float(temperature), int(top_k), float(top_p), int(seed), int(offset)
    )
