"""Triton `sample_tokens`: guidance, temperature, top-k, top-p and the counter-based draw, one program per row.

Tokens are identical to magvit2/ops/reference/sampling.py. The rules that decide them (arithmetic, visiting order,
nucleus, draw) live in sampling_rules.py, the one file to re-sync when the reference changes; this file runs the
phases and owns the scratch layout. Per row:

1. one pass over the vocabulary: x = combine(logits, uncond) -> scratch (float32), the maximum and its first
   index (top_k = 1 stops here), NaN checks (inputs, then x: inf - inf in the guidance) and non-finite checks
   (reported per row, raised on the host);
2. top-k: the k-th largest x by radix select over an order key (4 passes of 8-bit histograms, no sort);
3. weights w = exp_det(x - max) in float32 (float64 from here on), kept = w > 0 (and x >= the k-th largest),
   compacted into (index, w) lists in index order with an in-block cumsum;
4. top-p: the nucleus is a prefix of the kept tokens by x descending (ties: lower index first), cut where the
   mass before a token (summed in index order) passes p * total. Each kept token has a 63-bit key (x key,
   position), and a bisection over that key, each step one exact masked pass over the kept list, finds the
   cutoff: no sort and no batch, the same passes for any nucleus width; tokens below the cut get weight 0;
5. draw: sequential prefix sums of the kept weights, the first one above u * total (else the last kept token).

All sequential float64 sums go through `seq_prefix` (exact, parallel within a window; see sampling_rules.py).
Scratch memory is O(rows x vocab): float32 x, int32 indices, float64 weights and, with top-p, int64 keys.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from magvit2.ops.triton._common import INTERPRET, check_device, next_power_of_2
from magvit2.ops.triton.sampling_rules import (
    combine,
    draw,
    exp_det,
    join_u64,
    nucleus,
    order_key,
    radix_select,
    split_u64,
    uniform,
    visit_key,
)


@triton.jit(do_not_specialize=["top_k", "top_p_hi", "top_p_lo", "seed_hi", "seed_lo", "offset_hi", "offset_lo"])
def _sample_kernel(
    logits,
    uncond,
    stride_l,
    stride_lv,
    stride_u,
    stride_uv,
    out,
    status,
    xs,
    kept_idx,
    kept_w,
    kept_key,
    V,
    cfg_scale,
    temperature,
    top_k,
    top_p_hi,
    top_p_lo,
    seed_hi,
    seed_lo,
    offset_hi,
    offset_lo,
    HAS_UNCOND: tl.constexpr,
    GREEDY: tl.constexpr,
    TOP_K: tl.constexpr,
    TOP_P: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    r64 = row.to(tl.int64)
    offs = tl.arange(0, BLOCK)
    xs += r64 * V
    kept_idx += r64 * V
    kept_w += r64 * V

    # 1. x = combine(logits, uncond), its maximum and first argmax, NaN checks on the raw inputs and on x
    top = tl.full([], float("-inf"), tl.float32)
    first = tl.full([], 0, tl.int32)
    nan = tl.full([], 0, tl.int32)
    nan_x = tl.full([], 0, tl.int32)
    for c0 in range(0, V, BLOCK):
        i = c0 + offs
        ok = i < V
        c = tl.load(logits + r64 * stride_l + i * stride_lv, mask=ok, other=0.0).to(tl.float32)
        bad = c != c
        u = c
        if HAS_UNCOND:
            u = tl.load(uncond + r64 * stride_u + i * stride_uv, mask=ok, other=0.0).to(tl.float32)
            bad = bad | (u != u)
        x = tl.where(ok, combine(c, u, cfg_scale, temperature, HAS_UNCOND), float("-inf"))
        if not GREEDY:
            tl.store(xs + i, x, mask=ok)
        nan = tl.maximum(nan, tl.max(bad.to(tl.int32)))
        nan_x = tl.maximum(nan_x, tl.max((x != x).to(tl.int32)))  # padding lanes are -inf
        m = tl.max(x)
        arg = tl.min(tl.where(x == m, i, V))
        better = m > top
        first = tl.where(better, arg, first)
        top = tl.where(better, m, top)
    # the first error in the reference's order: NaN input, NaN after guidance, no finite x, an infinite x
    code = tl.where(top == float("inf"), 4, 0)
    code = tl.where(top == float("-inf"), 3, code)
    code = tl.where(nan_x > 0, 2, code)
    code = tl.where(nan > 0, 1, code)
    tl.store(status + row, code)

    if GREEDY:
        token = first
    else:
        tl.debug_barrier()  # xs is complete
        # 2. top-k threshold: the k-th largest order key
        threshold = tl.full([], 0, tl.int64)
        if TOP_K:
            threshold = radix_select(xs, V, 2**32, top_k, True, 32, BLOCK)
        # 3. weights of the kept tokens, compacted in index order
        top32 = tl.where(code == 0, top, 0.0)  # rows in error: any finite value, no inf - inf
        nk = 0
        for c0 in range(0, V, BLOCK):
            i = c0 + offs
            ok = i < V
            x = tl.load(xs + i, mask=ok, other=float("-inf"))
            x = tl.where(x == x, x, float("-inf"))  # rows in error: no NaN reaches the weights
            w = exp_det(x - top32).to(tl.float64)
            keep = ok & (w > 0.0)
            if TOP_K:
                keep = keep & (order_key(x) >= threshold)
            pos = nk + tl.cumsum(keep.to(tl.int32), 0) - 1
            tl.store(kept_idx + pos, i, mask=keep)
            tl.store(kept_w + pos, w, mask=keep)
            if TOP_P:
                tl.store(kept_key + r64 * V + pos, visit_key(x, pos), mask=keep)
            nk += tl.sum(keep.to(tl.int32))
        tl.debug_barrier()
        # 4. top-p: weights outside the nucleus become 0
        if TOP_P:
            top_p = join_u64(top_p_hi, top_p_lo).to(tl.float64, bitcast=True)
            nucleus(kept_key + r64 * V, kept_w, nk, top_p, BLOCK)
        # 5. draw
        u = uniform(join_u64(seed_hi, seed_lo), join_u64(offset_hi, offset_lo), row)
        token = draw(kept_idx, kept_w, nk, u, BLOCK)
    tl.store(out + row, token.to(tl.int64))


def _float32(value: float) -> float:
    """The float32 rounding the reference applies (torch.tensor(value, dtype=float32))."""
    return torch.tensor(value, dtype=torch.float32).item()


def _raise_row_errors(status: torch.Tensor) -> None:
    for code, message in (
        (1, "has NaN logits"),
        (2, "has NaN logits after guidance (a logit infinite in both logits and uncond)"),
        (3, "has no finite logit"),
        (4, "has an infinite logit (after guidance and temperature)"),
    ):
        rows = (status == code).nonzero()
        if rows.numel():
            raise ValueError(f"sample_tokens: row {int(rows[0])} {message}")


def sample_tokens(
    logits: torch.Tensor,
    uncond: torch.Tensor | None,
    cfg_scale: float,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    offset: int,
    *,
    block: int | None = None,
) -> torch.Tensor:
    """(R, V) logits (and optional (R, V) unconditional logits) -> (R,) int64, as the reference, any strides.

    block: tokens per vector step (power of 2 >= 16). Default: 1024 compiled, 4096 interpreted (few, wide steps are
    what the interpreter runs fast).
    """
    check_device("sample_tokens", logits)
    if logits.dim() != 2 or not logits.is_floating_point() or logits.shape[1] < 1:
        raise ValueError(f"sample_tokens: logits must be a floating (rows, vocab >= 1) tensor, got {logits.shape}")
    if uncond is not None and (uncond.shape != logits.shape or uncond.dtype != logits.dtype):
        raise ValueError(f"sample_tokens: uncond must match logits ({tuple(logits.shape)}, {logits.dtype})")
    if not temperature > 0:
        raise ValueError(f"sample_tokens: temperature must be > 0 (top_k=1 is greedy), got {temperature}")
    if top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"sample_tokens: top_k must be >= 0 and top_p in (0, 1], got {top_k}, {top_p}")
    rows, vocab = logits.shape
    if vocab >= 2**31:
        raise ValueError(f"sample_tokens: vocabularies up to 2^31 - 1 are supported, got {vocab}")
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    greedy = top_k == 1
    use_k = not greedy and 0 < top_k < vocab
    use_p = not greedy and top_p < 1.0
    block = block or max(16, min(next_power_of_2(vocab), 4096 if INTERPRET else 1024))
    dev = logits.device
    xs = torch.empty((rows, vocab), dtype=torch.float32, device=dev)
    kept_idx = torch.empty((rows, vocab) if not greedy else (1,), dtype=torch.int32, device=dev)
    kept_w = torch.empty((rows, vocab) if not greedy else (1,), dtype=torch.float64, device=dev)
    kept_key = torch.empty((rows, vocab) if use_p else (1,), dtype=torch.int64, device=dev)
    status = torch.empty(rows, dtype=torch.int32, device=dev)
    un = uncond if uncond is not None else logits
    top_p_bits = struct.unpack("<q", struct.pack("<d", float(top_p)))[0]
    _sample_kernel[(rows,)](
        logits,
        un,
        logits.stride(0),
        logits.stride(1),
        un.stride(0),
        un.stride(1),
        out,
        status,
        xs,
        kept_idx,
        kept_w,
        kept_key,
        vocab,
        _float32(cfg_scale),
        _float32(temperature),
        int(top_k),
        *split_u64(top_p_bits),
        *split_u64(int(seed)),
        *split_u64(int(offset)),
        HAS_UNCOND=uncond is not None,
        GREEDY=greedy,
        TOP_K=use_k,
        TOP_P=use_p,
        BLOCK=block,
        num_warps=4,
        enable_fp_fusion=False,
    )
    if bool((status != 0).any()):
        _raise_row_errors(status)
    return out
