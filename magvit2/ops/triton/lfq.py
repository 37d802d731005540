"""Triton `lfq_quantize`: codes, the index and every factorized index in one pass over z.

One program per tile of BLOCK_N tokens x all K channels (padded to a power of 2): the tile is read once, the codes
are written from it and each group's LSB-first index is a masked sum of per-channel powers of two (distinct bits:
the int64 sum is exact in any order). Bit-exact with the reference's `z > 0` (-0.0 and NaN give code -1 and bit 0),
tested on the raw bits as the C++ kernel does: z > 0 <=> 0 < bits <= bits(+inf) as signed integers of the dtype's
width, which needs no float conversion (the interpreter flushes bfloat16 subnormals to 0 when converting).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from magvit2.ops.triton._common import INTERPRET, check_device, next_power_of_2

MAX_CHANNELS = 4096  # one tile row holds every channel
# bit width and bit pattern of +inf per dtype
POSITIVE_INFINITY = {
    torch.float16: (16, 0x7C00),
    torch.bfloat16: (16, 0x7F80),
    torch.float32: (32, 0x7F800000),
    torch.float64: (64, 0x7FF0000000000000),
}


@triton.jit
def _quantize_kernel(
    z,
    stride_n,
    stride_k,
    codes,
    indices,
    column_group,
    column_weight,
    N,
    K: tl.constexpr,
    GROUPS: tl.constexpr,
    INT_BITS: tl.constexpr,
    POS_INF: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    col_ok = cols < K
    ok = row_ok[:, None] & col_ok[None, :]
    r64 = rows.to(tl.int64)
    values = tl.load(z + r64[:, None] * stride_n + cols[None, :] * stride_k, mask=ok, other=0.0)
    if INT_BITS == 16:
        bits = values.to(tl.int16, bitcast=True)
    elif INT_BITS == 32:
        bits = values.to(tl.int32, bitcast=True)
    else:
        bits = values.to(tl.int64, bitcast=True)
    positive = (bits > 0) & (bits <= POS_INF)
    tl.store(codes + r64[:, None] * K + cols[None, :], tl.where(positive, 1.0, -1.0), mask=ok)
    group = tl.load(column_group + cols, mask=col_ok, other=-1)
    weight = tl.load(column_weight + cols, mask=col_ok, other=0)
    for g in tl.static_range(GROUPS):
        bits = tl.where(positive & (group == g)[None, :], weight[None, :], 0)
        tl.store(indices + g * N + r64, tl.sum(bits, axis=1), mask=row_ok)


_TABLES: dict[tuple[tuple[int, ...], torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _column_tables(group_bits: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel: its group and its power of two within the group (cached per split and device)."""
    key = (group_bits, device)
    if key not in _TABLES:
        group = [g for g, bits in enumerate(group_bits) for _ in range(bits)]
        weight = [1 << i for bits in group_bits for i in range(bits)]
        _TABLES[key] = (
            torch.tensor(group, dtype=torch.int32, device=device),
            torch.tensor(weight, dtype=torch.int64, device=device),
        )
    return _TABLES[key]


def lfq_quantize(z: torch.Tensor, group_bits: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) any strides -> codes (N, K) in z.dtype (contiguous), indices (G, N) int64, as the reference."""
    check_device("lfq_quantize", z)
    n, k = z.shape
    if z.dtype not in POSITIVE_INFINITY:
        raise ValueError(f"lfq_quantize: z must be float16, bfloat16, float32 or float64, got {z.dtype}")
    if sum(group_bits) != k or k > MAX_CHANNELS:
        raise ValueError(f"lfq_quantize: group_bits {list(group_bits)} must sum to K = {k} <= {MAX_CHANNELS}")
    codes = torch.empty((n, k), dtype=z.dtype, device=z.device)
    indices = torch.empty((len(group_bits), n), dtype=torch.int64, device=z.device)
    if n == 0 or k == 0:
        return codes, indices.zero_()
    group, weight = _column_tables(tuple(int(b) for b in group_bits), z.device)
    block_k = max(16, next_power_of_2(k))
    # ~4k elements per tile compiled (registers); the interpreter runs whole-array steps fastest
    block_n = max(1, min(next_power_of_2(n), (65536 if INTERPRET else 4096) // block_k))
    _quantize_kernel[(triton.cdiv(n, block_n),)](
        z,
        z.stride(0),
        z.stride(1),
        codes,
        indices,
        group,
        weight,
        n,
        K=k,
        GROUPS=len(group_bits),
        INT_BITS=POSITIVE_INFINITY[z.dtype][0],
        POS_INF=POSITIVE_INFINITY[z.dtype][1],
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=4,
    )
    return codes, indices
