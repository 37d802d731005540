"""Triton `lfq_entropy_tiled`: the exact codebook entropy for K <= 32 without the 2^K average in memory.

Notation as in magvit2/ops/reference/lfq.py: x = 4 t z, P_A (N, 2^Ka), P_B (N, 2^Kb) the probabilities of the low and
high bit groups, M = P_A^T P_B / N (2^Ka, 2^Kb), never stored.

Rows kernel, one program per BLOCK_A rows of M: for each (BLOCK_A x BLOCK_B) tile it accumulates tl.dot of P_A^T
and P_B chunks (built in registers from z, BLOCK_T tokens at a time), adds the tile's -sum M log(M + eps) to its
float64 partial and, with NEED_GRAD, turns the tile into D = dH/dM / N and walks the tokens again to add P_B D^T to
its own columns of dH/dP_A (N, 2^Ka). Columns kernel, one program per BLOCK_B columns: the same tiles, adding P_A D to
its columns of dH/dP_B. Each program owns the columns it writes (deterministic, no atomics), at the price of
computing each tile of M twice when a gradient is wanted (four GEMMs of N 2^K multiply-adds, the C++ kernel's three
plus one). The last step, from dH/dP to dH/dz through the bit probabilities (O(N K 2^(K/2))), is plain torch.
Accumulation is float32 (inputs float16/bfloat16/float32; float64 stays with the reference), the entropy's sum
float64, tl.dot in "ieee" precision.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from magvit2.ops import reference
from magvit2.ops.reference import split_bits
from magvit2.ops.triton._common import INTERPRET, check_device, next_power_of_2
from magvit2.ops.triton.entropy import FLOAT32_TINY, SERVED_DTYPES, _group_probs


@triton.jit
def _probs(z, stride_n, stride_k, t, t_ok, scale, codes, width, FIRST: tl.constexpr, BITS: tl.constexpr):
    """(BLOCK_T, BLOCK_C) group probabilities of tokens t, zero outside the tokens and the group's width."""
    p = _group_probs(z + t.to(tl.int64) * stride_n, t_ok, stride_k, scale, codes, FIRST, BITS)
    return tl.where(t_ok[:, None] & (codes < width)[None, :], p, 0.0)


@triton.jit
def _tile(z, stride_n, stride_k, N, scale, inv_n, eps, a, b,
          K: tl.constexpr, KA: tl.constexpr, WA: tl.constexpr, WB: tl.constexpr, EPS_ZERO: tl.constexpr,
          BLOCK_T: tl.constexpr):  # fmt: skip
    """The (a, b) tile of M: its entropy share -sum M log(M + eps) (float32) and D = dH/dM / N (0 outside M)."""
    acc = tl.zeros([a.shape[0], b.shape[0]], tl.float32)
    for t0 in range(0, N, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_ok = t < N
        p_a = _probs(z, stride_n, stride_k, t, t_ok, scale, a, WA, 0, KA)
        p_b = _probs(z, stride_n, stride_k, t, t_ok, scale, b, WB, KA, K - KA)
        acc += tl.dot(tl.trans(p_a), p_b, input_precision="ieee")
    m = acc * inv_n
    ok = (a < WA)[:, None] & (b < WB)[None, :]
    if EPS_ZERO:
        log_m = tl.log(tl.maximum(m, FLOAT32_TINY))
        slope = log_m + 1.0
    else:
        log_m = tl.log(m + eps)
        slope = log_m + m / (m + eps)
    share = -tl.sum(tl.sum(tl.where(ok, m * log_m, 0.0), axis=1), axis=0)
    return share, tl.where(ok, -slope * inv_n, 0.0)


@triton.jit
def _rows_kernel(z, stride_n, stride_k, N, scale, inv_n, eps, partial, grad_a,
                 K: tl.constexpr, KA: tl.constexpr, WA: tl.constexpr, WB: tl.constexpr, EPS_ZERO: tl.constexpr,
                 NEED_GRAD: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_T: tl.constexpr):  # fmt: skip
    a = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    total = tl.zeros([1], tl.float64)
    for b0 in range(0, WB, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        share, d = _tile(z, stride_n, stride_k, N, scale, inv_n, eps, a, b, K, KA, WA, WB, EPS_ZERO, BLOCK_T)
        total += share.to(tl.float64)
        if NEED_GRAD:
            for t0 in range(0, N, BLOCK_T):
                t = t0 + tl.arange(0, BLOCK_T)
                t_ok = t < N
                p_b = _probs(z, stride_n, stride_k, t, t_ok, scale, b, WB, KA, K - KA)
                ptr = grad_a + t.to(tl.int64)[:, None] * WA + a[None, :]
                ok = t_ok[:, None] & (a < WA)[None, :]
                g = tl.load(ptr, mask=ok, other=0.0) + tl.dot(p_b, tl.trans(d), input_precision="ieee")
                tl.store(ptr, g, mask=ok)
    tl.store(partial + tl.program_id(0) + tl.arange(0, 1), total)


@triton.jit
def _cols_kernel(z, stride_n, stride_k, N, scale, inv_n, eps, grad_b,
                 K: tl.constexpr, KA: tl.constexpr, WA: tl.constexpr, WB: tl.constexpr, EPS_ZERO: tl.constexpr,
                 BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr):  # fmt: skip
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    for a0 in range(0, WA, BLOCK_A):
        a = a0 + tl.arange(0, BLOCK_A)
        _, d = _tile(z, stride_n, stride_k, N, scale, inv_n, eps, a, b, K, KA, WA, WB, EPS_ZERO, BLOCK_T)
        for t0 in range(0, N, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            t_ok = t < N
            p_a = _probs(z, stride_n, stride_k, t, t_ok, scale, a, WA, 0, KA)
            ptr = grad_b + t.to(tl.int64)[:, None] * WB + b[None, :]
            ok = t_ok[:, None] & (b < WB)[None, :]
            g = tl.load(ptr, mask=ok, other=0.0) + tl.dot(p_a, d, input_precision="ieee")
            tl.store(ptr, g, mask=ok)


def _check(z: torch.Tensor) -> None:
    check_device("lfq_entropy_tiled", z)
    if z.dtype not in SERVED_DTYPES or z.dim() != 2 or not 1 <= z.shape[1] <= 32:
        raise ValueError(
            "lfq_entropy_tiled: the Triton kernel takes (N, K <= 32) float16/bfloat16/float32, "
            f"got {z.dtype} {tuple(z.shape)}"
        )


def _blocks(wa: int, wb: int, n: int, tile: int) -> tuple[int, int, int]:
    """(BLOCK_A, BLOCK_B, BLOCK_T): powers of 2 >= 16 (tl.dot), at most `tile` when one is asked for (rounded up to
    16); the interpreter prefers few wide steps, a GPU 64 x 64 tiles."""
    cap, cap_t = (256, 128) if INTERPRET else (64, 32)
    if tile > 0:
        cap = max(16, next_power_of_2(tile))
    return (
        max(16, min(next_power_of_2(wa), cap)),
        max(16, min(next_power_of_2(wb), cap)),
        max(16, min(next_power_of_2(n), cap_t)),
    )


def lfq_entropy_tiled(
    z: torch.Tensor, inv_temperature: float, eps: float, need_grad: bool, tile: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z (N, K) -> (per_sample, codebook, codebook_grad (N, K) or (0, K)) in float32, as
    reference.lfq_entropy_tiled."""
    _check(z)
    n, k = z.shape
    ka, kb = split_bits(k)
    wa, wb = 2**ka, 2**kb
    block_a, block_b, block_t = _blocks(wa, wb, n, tile)
    scale, inv_n = 4.0 * inv_temperature, 1.0 / max(n, 1)
    x = scale * z.float()
    per_sample = reference.binary_entropy_from_logits(x).sum(1).sum(dtype=torch.float64) * inv_n
    grid_a, grid_b = triton.cdiv(wa, block_a), triton.cdiv(wb, block_b)
    partial = torch.zeros(grid_a, dtype=torch.float64, device=z.device)
    grad_a = torch.zeros((n, wa) if need_grad else (1, 1), dtype=torch.float32, device=z.device)
    common = dict(K=k, KA=ka, WA=wa, WB=wb, EPS_ZERO=eps == 0.0, BLOCK_A=block_a, BLOCK_B=block_b, BLOCK_T=block_t)
    args = (z, z.stride(0), z.stride(1), n, scale, inv_n, eps)
    _rows_kernel[(grid_a,)](*args, partial, grad_a, NEED_GRAD=need_grad, num_warps=4, **common)
    codebook = partial.sum().float()
    if not need_grad:
        return per_sample.float(), codebook, x.new_zeros((0, k))
    grad_b = torch.zeros((n, wb), dtype=torch.float32, device=z.device)
    _cols_kernel[(grid_b,)](*args, grad_b, num_warps=4, **common)
    prob_a, prob_b = reference.group_probs(x)  # (N, 2^Ka), (N, 2^Kb): O(N 2^(K/2)), as the gradient tables
    grad = scale * reference.bit_grad(x, grad_a * prob_a, grad_b * prob_b)
    return per_sample.float(), codebook, grad
