"""Triton `lfq_entropy` forward and backward: per-bit sigmoids -> P_A / P_B tiles -> GEMM -> entropy, fused.

Notation as in magvit2/ops/reference/lfq.py: x = 4 t z, q_i = sigmoid(+-x_i), P_A (N, 2^Ka) and P_B (N, 2^Kb) the
probabilities of the low and high bit groups, avg = P_A^T P_B / N (2^Ka, 2^Kb).

Forward, one program per (BLOCK_A x BLOCK_B) tile of avg: it walks all N tokens in chunks of BLOCK_T, builds its
P_A^T (BLOCK_A x BLOCK_T) and P_B (BLOCK_T x BLOCK_B) tiles in registers from the token's K sigmoids (one product
per bit, in the reference's bit order), accumulates their tl.dot, then writes its avg tile and its share of
-sum avg log(avg + eps). The per-sample entropy sum_i H_b(q_i) comes from the same sigmoids (program (0, 0) writes
it). Neither N x 2^K nor N x 2^(K/2) ever reaches memory; the only outputs are avg (2^K floats) and one float per
program, reduced on the host side of the launch (deterministic: no atomics).

Backward, one program per BLOCK_T tokens: dL/dP_A = P_B dAvg^T and dL/dP_B = P_A dAvg by tl.dot over avg tiles
(dAvg = g_cb * d/davg[-sum avg log(avg + eps)] (+ grad_avg), scaled by 1/N, precomputed once by a small kernel),
times P, then reduced onto the bits by two more dots against 0/1 bit tables; the group tiles are rebuilt from z
where they are needed instead of being stored. Accumulation is float32 (inputs float16/bfloat16/float32; float64
stays with the reference), tl.dot in "ieee" precision (TF32 would cost ~1e-3 relative on avg).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from magvit2.ops.reference import split_bits
from magvit2.ops.triton._common import INTERPRET, check_device, next_power_of_2

FLOAT32_TINY = tl.constexpr(1.1754943508222875e-38)


@triton.jit
def _bit_probs(x):
    """q1 = sigmoid(x), q0 = sigmoid(-x) and H_b(q1) from one e = exp(-|x|) (no cancellation at large |x|)."""
    a = tl.abs(x)
    e = tl.exp(-a)
    big = 1.0 / (1.0 + e)
    small = e * big
    one_plus = 1.0 + e
    # log1p(e) without a libdevice call: log(1 + e) * e / ((1 + e) - 1) is accurate to a few ulp
    log1p = tl.where(one_plus == 1.0, e, tl.log(one_plus) * (e / tl.maximum(one_plus - 1.0, FLOAT32_TINY)))
    entropy = log1p + tl.where(e > 0.0, a * small, 0.0)
    positive = x >= 0.0
    return tl.where(positive, big, small), tl.where(positive, small, big), entropy


@triton.jit
def _group_probs(rows, row_ok, stride_k, scale, codes, FIRST: tl.constexpr, BITS: tl.constexpr):
    """(BLOCK_T, BLOCK_C) probabilities of the LSB-first group indices `codes` over channels FIRST..FIRST+BITS-1."""
    probs = tl.full([rows.shape[0], codes.shape[0]], 1.0, tl.float32)
    for i in tl.static_range(BITS):
        x = scale * tl.load(rows + (FIRST + i) * stride_k, mask=row_ok, other=0.0).to(tl.float32)
        q1, q0, _ = _bit_probs(x)
        probs = probs * tl.where(((codes >> i) & 1)[None, :] != 0, q1[:, None], q0[:, None])
    return probs


@triton.jit
def _entropy_fwd_kernel(
    z,
    stride_n,
    stride_k,
    N,
    scale,
    inv_n,
    eps,
    avg,
    partial,
    per_sample,
    K: tl.constexpr,
    KA: tl.constexpr,
    WA: tl.constexpr,
    WB: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid_a = tl.program_id(0)
    pid_b = tl.program_id(1)
    a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    acc = tl.zeros([BLOCK_A, BLOCK_B], tl.float32)
    entropy = tl.zeros([BLOCK_T], tl.float32)
    for t0 in range(0, N, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_ok = t < N
        rows = z + t.to(tl.int64) * stride_n
        prob_a = tl.full([BLOCK_A, BLOCK_T], 1.0, tl.float32)  # P_A^T tile
        for i in tl.static_range(KA):
            q1, q0, h = _bit_probs(scale * tl.load(rows + i * stride_k, mask=t_ok, other=0.0).to(tl.float32))
            entropy += tl.where(t_ok, h, 0.0)
            prob_a = prob_a * tl.where(((a >> i) & 1)[:, None] != 0, q1[None, :], q0[None, :])
        prob_b = tl.full([BLOCK_T, BLOCK_B], 1.0, tl.float32)
        for i in tl.static_range(K - KA):
            q1, q0, h = _bit_probs(scale * tl.load(rows + (KA + i) * stride_k, mask=t_ok, other=0.0).to(tl.float32))
            entropy += tl.where(t_ok, h, 0.0)
            prob_b = prob_b * tl.where(((b >> i) & 1)[None, :] != 0, q1[:, None], q0[:, None])
        prob_b = tl.where(t_ok[:, None], prob_b, 0.0)
        acc += tl.dot(prob_a, prob_b, input_precision="ieee")
    mean = acc * inv_n
    ok = (a < WA)[:, None] & (b < WB)[None, :]
    tl.store(avg + a[:, None] * WB + b[None, :], mean, mask=ok)
    used = ok & (mean != 0.0)
    terms = tl.where(used, mean * tl.log(tl.where(used, mean + eps, 1.0)), 0.0)  # 0 log 0 = 0
    tl.store(partial + pid_a * tl.num_programs(1) + pid_b, -tl.sum(tl.sum(terms, axis=1), axis=0))
    tl.store(per_sample, tl.sum(entropy) * inv_n, mask=(pid_a == 0) & (pid_b == 0))


@triton.jit
def _avg_grad_kernel(
    avg,
    grad_avg,
    grad_codebook,
    out,
    numel,
    inv_n,
    eps,
    HAS_GRAD_AVG: tl.constexpr,
    EPS_ZERO: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out = (g_cb * d/davg[-sum avg log(avg + eps)] + grad_avg) / N; at eps = 0 avg is clamped to the smallest
    normal float, as reference.codebook_entropy_grad."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    m = tl.load(avg + offs, mask=ok, other=1.0)
    if EPS_ZERO:
        slope = tl.log(tl.maximum(m, FLOAT32_TINY)) + 1.0
    else:
        slope = tl.log(m + eps) + m / (m + eps)
    d = -tl.load(grad_codebook).to(tl.float32) * slope
    if HAS_GRAD_AVG:
        d += tl.load(grad_avg + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out + offs, d * inv_n, mask=ok)


@triton.jit
def _entropy_bwd_kernel(
    z,
    stride_n,
    stride_k,
    N,
    scale,
    inv_n,
    d_avg,
    grad_per_sample,
    grad,
    K: tl.constexpr,
    KA: tl.constexpr,
    WA: tl.constexpr,
    WB: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < N
    cols = tl.arange(0, KP)
    rows = z + t.to(tl.int64) * stride_n
    x = tl.load(rows[:, None] + cols[None, :] * stride_k, mask=t_ok[:, None] & (cols < K)[None, :], other=0.0)
    x = scale * x.to(tl.float32)
    q1, q0, _ = _bit_probs(x)
    w = q1 * q0
    # d H_b(sigmoid(x)) / dx = -x s (1 - s): 0 where |x| = inf (w = 0), NaN stays NaN
    out = (tl.load(grad_per_sample).to(tl.float32) * scale * inv_n) * tl.where(w == 0.0, 0.0, -x * w)
    d1 = tl.zeros([BLOCK_T, KP], tl.float32)  # dL/dlog q_i(1)
    d0 = tl.zeros([BLOCK_T, KP], tl.float32)  # dL/dlog q_i(0)
    for a0 in range(0, WA, BLOCK_A):
        a = a0 + tl.arange(0, BLOCK_A)
        g = tl.zeros([BLOCK_T, BLOCK_A], tl.float32)
        for b0 in range(0, WB, BLOCK_B):
            b = b0 + tl.arange(0, BLOCK_B)
            prob_b = _group_probs(rows, t_ok, stride_k, scale, b, KA, K - KA)
            d_t = tl.load(d_avg + a[None, :] * WB + b[:, None], mask=(a < WA)[None, :] & (b < WB)[:, None], other=0.0)
            g += tl.dot(prob_b, d_t, input_precision="ieee")
        g = g * _group_probs(rows, t_ok, stride_k, scale, a, 0, KA)
        in_group = (a < WA)[:, None] & (cols < KA)[None, :]
        is_set = ((a[:, None] >> tl.where(cols < KA, cols, 0)[None, :]) & 1) != 0
        d1 += tl.dot(g, tl.where(in_group & is_set, 1.0, 0.0), input_precision="ieee")
        d0 += tl.dot(g, tl.where(in_group & ~is_set, 1.0, 0.0), input_precision="ieee")
    for b0 in range(0, WB, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        g = tl.zeros([BLOCK_T, BLOCK_B], tl.float32)
        for a0 in range(0, WA, BLOCK_A):
            a = a0 + tl.arange(0, BLOCK_A)
            prob_a = _group_probs(rows, t_ok, stride_k, scale, a, 0, KA)
            d = tl.load(d_avg + a[:, None] * WB + b[None, :], mask=(a < WA)[:, None] & (b < WB)[None, :], other=0.0)
            g += tl.dot(prob_a, d, input_precision="ieee")
        g = g * _group_probs(rows, t_ok, stride_k, scale, b, KA, K - KA)
        in_group = (b < WB)[:, None] & (cols >= KA)[None, :] & (cols < K)[None, :]
        is_set = ((b[:, None] >> tl.where(cols >= KA, cols - KA, 0)[None, :]) & 1) != 0
        d1 += tl.dot(g, tl.where(in_group & is_set, 1.0, 0.0), input_precision="ieee")
        d0 += tl.dot(g, tl.where(in_group & ~is_set, 1.0, 0.0), input_precision="ieee")
    out += scale * (d1 * q0 - d0 * q1)
    tl.store(grad + t.to(tl.int64)[:, None] * K + cols[None, :], out, mask=t_ok[:, None] & (cols < K)[None, :])


SERVED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check(fn: str, z: torch.Tensor) -> None:
    check_device(fn, z)
    if z.dtype not in SERVED_DTYPES or z.dim() != 2 or not 1 <= z.shape[1] <= 24:
        raise ValueError(
            f"{fn}: the Triton kernel takes (N, K <= 24) float16/bfloat16/float32, got {z.dtype} {tuple(z.shape)}"
        )


def _tiles(wa: int, wb: int, n: int) -> tuple[int, int, int]:
    """(BLOCK_A, BLOCK_B, BLOCK_T): >= 16 for tl.dot; the interpreter prefers one wide step over many."""
    cap, cap_t = (512, 256) if INTERPRET else (64, 32)
    return (
        max(16, min(next_power_of_2(wa), cap)),
        max(16, min(next_power_of_2(wb), cap)),
        max(16, min(next_power_of_2(n), cap_t)),
    )


def lfq_entropy(z: torch.Tensor, inv_temperature: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z (N, K) -> (per_sample, codebook, avg (2^Ka, 2^Kb)) in float32, as reference.lfq_entropy."""
    _check("lfq_entropy", z)
    n, k = z.shape
    ka, kb = split_bits(k)
    wa, wb = 2**ka, 2**kb
    block_a, block_b, block_t = _tiles(wa, wb, n)
    grid = (triton.cdiv(wa, block_a), triton.cdiv(wb, block_b))
    avg = torch.empty((wa, wb), dtype=torch.float32, device=z.device)
    partial = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=z.device)
    per_sample = torch.empty((), dtype=torch.float32, device=z.device)
    _entropy_fwd_kernel[grid](
        z,
        z.stride(0),
        z.stride(1),
        n,
        4.0 * inv_temperature,
        1.0 / max(n, 1),
        eps,
        avg,
        partial,
        per_sample,
        K=k,
        KA=ka,
        WA=wa,
        WB=wb,
        BLOCK_A=block_a,
        BLOCK_B=block_b,
        BLOCK_T=block_t,
        num_warps=4,
    )
    return per_sample, partial.sum(), avg


def lfq_entropy_backward(
    grad_per_sample: torch.Tensor,
    grad_codebook: torch.Tensor,
    grad_avg: torch.Tensor | None,
    z: torch.Tensor,
    avg: torch.Tensor,
    inv_temperature: float,
    eps: float,
) -> torch.Tensor:
    """Gradient of lfq_entropy w.r.t. z (N, K) in z.dtype, as reference.lfq_entropy_backward."""
    _check("lfq_entropy_backward", z)
    n, k = z.shape
    ka, kb = split_bits(k)
    wa, wb = 2**ka, 2**kb
    if avg.shape != (wa, wb) or avg.dtype != torch.float32:
        raise ValueError(f"lfq_entropy_backward: avg must be ({wa}, {wb}) float32, got {avg.dtype} {avg.shape}")
    grad = torch.empty((n, k), dtype=z.dtype, device=z.device)
    if n == 0:
        return grad
    inv_n = 1.0 / n
    avg = avg.contiguous()
    d_avg = torch.empty_like(avg)
    block = 4096
    _avg_grad_kernel[(triton.cdiv(wa * wb, block),)](
        avg,
        grad_avg.contiguous() if grad_avg is not None else avg,
        grad_codebook,
        d_avg,
        wa * wb,
        inv_n,
        eps,
        HAS_GRAD_AVG=grad_avg is not None,
        EPS_ZERO=eps == 0.0,
        BLOCK=block,
        num_warps=4,
    )
    block_a, block_b, block_t = _tiles(wa, wb, n)
    _entropy_bwd_kernel[(triton.cdiv(n, block_t),)](
        z,
        z.stride(0),
        z.stride(1),
        n,
        4.0 * inv_temperature,
        inv_n,
        d_avg,
        grad_per_sample,
        grad,
        K=k,
        KA=ka,
        WA=wa,
        WB=wb,
        KP=max(16, next_power_of_2(k)),
        BLOCK_T=block_t,
        BLOCK_A=block_a,
        BLOCK_B=block_b,
        num_warps=4,
    )
    return grad
