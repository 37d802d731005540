"""Triton `sample_tokens`: guidance, temperature, top-k, top-p and the counter-based draw, one program per row.

Tokens are identical to magvit2/ops/sampling_reference.py (the rules live in sampling_rules.py). Per row:

1. one pass over the vocabulary: x = combine(logits, uncond) -> scratch (float32), the maximum and its first
   index (top_k = 1 stops here), NaN / non-finite checks (reported per row, raised on the host);
2. top-k: the k-th largest x by radix select over an order key (4 passes of 8-bit histograms, no sort);
3. weights w = exp_det(x - max), kept = w > 0 (and x >= the k-th largest), compacted into (index, w) lists in
   index order with an in-block cumsum;
4. top-p: the nucleus is a prefix of the kept tokens by x descending (ties: lower index first). The kernel takes
   the kept tokens in batches of BATCH in that order (radix select of the batch's lower bound on a 63-bit key
   (x key, position); inside the batch each token's rank is the count of larger keys, no sort network), runs the
   reference's sequential "mass before" through the batch and stops at the first batch that crosses p * total;
   tokens below the cut get weight 0;
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
    exp_det,
    join_u64,
    order_key,
    seq_prefix,
    split_u64,
    uniform,
)

POS_MAX = tl.constexpr(2**31 - 1)  # kept-list positions sit in the low 31 bits of the top-p key
NO_BOUND = tl.constexpr(2**63 - 1)  # above every key


@triton.jit
def radix_select(src, n, hi, count, FROM_X: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr):
    """The count-th largest (1-based) value below `hi` of src[0:n]: order_key of float32 x (FROM_X) or int64.

    MSD radix select, 8 bits per pass: a 256-bin histogram of the next digit among the values that share the
    prefix found so far, then the digit where the count from the top reaches `count`.
    """
    offs = tl.arange(0, BLOCK)
    bins = tl.arange(0, 256)
    prefix = tl.full([], 0, tl.int64)
    need = count
    for level in tl.static_range(NBITS // 8):
        hist = tl.zeros([256], tl.int32)
        for c0 in range(0, n, BLOCK):
            i = c0 + offs
            ok = i < n
            if FROM_X:
                v = order_key(tl.load(src + i, mask=ok, other=0.0))
            else:
                v = tl.load(src + i, mask=ok, other=0)
            ok = ok & (v < hi)
            if level > 0:
                ok = ok & ((v >> (NBITS - 8 * level)) == prefix)
            hist += tl.histogram(((v >> (NBITS - 8 * (level + 1))) & 255).to(tl.int32), 256, mask=ok)
        at_least = tl.cumsum(hist, 0, reverse=True)  # values with this digit or a larger one
        digit = tl.max(tl.where(at_least >= need, bins, -1))
        need -= tl.sum(tl.where(bins == digit, at_least - hist, 0))
        prefix = (prefix << 8) | digit.to(tl.int64)
    return prefix


@triton.jit
def nucleus_cut(kept_key, kept_w, batch, nk, limit, BLOCK: tl.constexpr, BATCH: tl.constexpr, RANK_CHUNK: tl.constexpr):
    """Smallest key of the nucleus: visit kept tokens by key descending, keep while the mass before <= limit."""
    offs = tl.arange(0, BLOCK)
    idx = tl.arange(0, BATCH)
    hi = tl.full([], NO_BOUND, tl.int64)
    cut = hi
    before = tl.zeros([], tl.float64)
    left = nk
    go = (nk > 0).to(tl.int32)
    while go != 0:
        low = radix_select(kept_key, nk, hi, tl.minimum(left, BATCH), False, 64, BLOCK)
        tl.debug_barrier()  # every thread has read the previous batch
        nb = 0
        for c0 in range(0, nk, BLOCK):
            j = c0 + offs
            v = tl.load(kept_key + j, mask=j < nk, other=-1)
            sel = (j < nk) & (v >= low) & (v < hi)
            tl.store(batch + nb + tl.cumsum(sel.to(tl.int32), 0) - 1, v, mask=sel)
            nb += tl.sum(sel.to(tl.int32))
        tl.debug_barrier()
        # order the batch without a sort network: rank = number of larger keys, then scatter to that slot
        keys = tl.load(batch + idx, mask=idx < nb, other=-1)
        rank = tl.zeros([BATCH], tl.int32)
        for i0 in range(0, nb, RANK_CHUNK):
            i = i0 + tl.arange(0, RANK_CHUNK)
            other = tl.load(batch + i, mask=i < nb, other=-1)
            rank += tl.sum((other[:, None] > keys[None, :]).to(tl.int32), axis=0)
        tl.store(batch + BATCH + rank, keys, mask=idx < nb)
        tl.debug_barrier()
        keys = tl.load(batch + BATCH + idx, mask=idx < nb, other=-1)
        w = tl.load(kept_w + (POS_MAX - (keys & POS_MAX)), mask=keys >= 0, other=0.0)
        p, after = seq_prefix(w, before, BATCH)
        # the batch's token j is visited with mass `before` (j = 0) or p[j - 1] before it; p never decreases
        n_in = (before <= limit).to(tl.int32) * (1 + tl.sum(((p <= limit) & (idx < nb - 1)).to(tl.int32)))
        cut = tl.where(n_in > 0, tl.sum(tl.where(idx == n_in - 1, keys, 0)), cut)
        before = after
        left -= nb
        hi = low
        go = ((n_in == nb) & (left > 0)).to(tl.int32)
    return cut


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
    batch,
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
    BATCH: tl.constexpr,
    RANK_CHUNK: tl.constexpr,
):
    row = tl.program_id(0)
    r64 = row.to(tl.int64)
    offs = tl.arange(0, BLOCK)
    xs += r64 * V
    kept_idx += r64 * V
    kept_w += r64 * V

    # 1. x = combine(logits, uncond), its maximum and first argmax, NaN check on the raw inputs
    top = tl.full([], float("-inf"), tl.float32)
    first = tl.full([], 0, tl.int32)
    nan = tl.full([], 0, tl.int32)
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
        m = tl.max(x)
        arg = tl.min(tl.where(x == m, i, V))
        better = m > top
        first = tl.where(better, arg, first)
        top = tl.where(better, m, top)
    code = tl.where(nan > 0, 1, tl.where(top == float("-inf"), 2, tl.where(top == float("inf"), 3, 0)))
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
        top64 = tl.where(code == 0, top, 0.0).to(tl.float64)  # rows in error: any finite value, no inf - inf
        nk = 0
        for c0 in range(0, V, BLOCK):
            i = c0 + offs
            ok = i < V
            x = tl.load(xs + i, mask=ok, other=float("-inf"))
            w = exp_det(x.to(tl.float64) - top64)
            keep = ok & (w > 0.0)
            if TOP_K:
                keep = keep & (order_key(x) >= threshold)
            pos = nk + tl.cumsum(keep.to(tl.int32), 0) - 1
            tl.store(kept_idx + pos, i, mask=keep)
            tl.store(kept_w + pos, w, mask=keep)
            if TOP_P:
                key = (order_key(x) << 31) | (POS_MAX - pos.to(tl.int64))
                tl.store(kept_key + r64 * V + pos, key, mask=keep)
            nk += tl.sum(keep.to(tl.int32))
        tl.debug_barrier()
        # 4. top-p: weights outside the nucleus become 0
        if TOP_P:
            total = tl.zeros([], tl.float64)
            for c0 in range(0, nk, BLOCK):
                j = c0 + offs
                _, total = seq_prefix(tl.load(kept_w + j, mask=j < nk, other=0.0), total, BLOCK)
            top_p = join_u64(top_p_hi, top_p_lo).to(tl.float64, bitcast=True)
            cut = nucleus_cut(
                kept_key + r64 * V, kept_w, batch + r64 * 2 * BATCH, nk, total * top_p, BLOCK, BATCH, RANK_CHUNK
            )
            for c0 in range(0, nk, BLOCK):
                j = c0 + offs
                outside = (j < nk) & (tl.load(kept_key + r64 * V + j, mask=j < nk, other=0) < cut)
                tl.store(kept_w + j, 0.0, mask=outside)
            tl.debug_barrier()
        # 5. draw: prefix sums in index order (stored over the weights), the first above u * total
        s = tl.zeros([], tl.float64)
        last = -1
        for c0 in range(0, nk, BLOCK):
            j = c0 + offs
            ok = j < nk
            w = tl.load(kept_w + j, mask=ok, other=0.0)
            p, s = seq_prefix(w, s, BLOCK)
            tl.store(kept_w + j, p, mask=ok)
            last = tl.maximum(last, tl.max(tl.where(ok & (w > 0.0), j, -1)))
        tl.debug_barrier()
        target = uniform(join_u64(seed_hi, seed_lo), join_u64(offset_hi, offset_lo), row) * s
        hit = nk
        for c0 in range(0, nk, BLOCK):
            j = c0 + offs
            ok = j < nk
            above = ok & (tl.load(kept_w + j, mask=ok, other=0.0) > target)
            hit = tl.minimum(hit, tl.min(tl.where(above, j, nk)))
        pick = tl.maximum(tl.where(hit < nk, hit, last), 0)
        token = tl.load(kept_idx + pick, mask=nk > 0, other=0)
    tl.store(out + row, token.to(tl.int64))


def _float32(value: float) -> float:
    """The float32 rounding the reference applies (torch.tensor(value, dtype=float32))."""
    return torch.tensor(value, dtype=torch.float32).item()


def _raise_row_errors(status: torch.Tensor) -> None:
    for code, message in ((1, "has NaN logits"), (2, "has no finite logit")):
        rows = (status == code).nonzero()
        if rows.numel():
            raise ValueError(f"sample_tokens: row {int(rows[0])} {message}")
    rows = (status == 3).nonzero()
    if rows.numel():
        raise ValueError(f"sample_tokens: row {int(rows[0])} has an infinite logit (after guidance and temperature)")


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
    batch: int | None = None,
) -> torch.Tensor:
    """(R, V) logits (and optional (R, V) unconditional logits) -> (R,) int64, as the reference, any strides.

    block: tokens per vector step (power of 2 >= 16); batch: top-p batch size (power of 2 >= 16, <= block).
    Defaults: 1024 / 256 compiled, 4096 / 1024 interpreted (few, wide steps are what the interpreter runs fast).
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
    batch_size = min(block, batch or (1024 if INTERPRET else 256))
    dev = logits.device
    xs = torch.empty((rows, vocab), dtype=torch.float32, device=dev)
    kept_idx = torch.empty((rows, vocab) if not greedy else (1,), dtype=torch.int32, device=dev)
    kept_w = torch.empty((rows, vocab) if not greedy else (1,), dtype=torch.float64, device=dev)
    kept_key = torch.empty((rows, vocab) if use_p else (1,), dtype=torch.int64, device=dev)
    scratch = torch.empty((rows, 2 * batch_size) if use_p else (1,), dtype=torch.int64, device=dev)
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
        scratch,
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
        BATCH=batch_size,
        RANK_CHUNK=batch_size if INTERPRET else 16,
        num_warps=4,
        enable_fp_fusion=False,
    )
    if bool((status != 0).any()):
        _raise_row_errors(status)
    return out
