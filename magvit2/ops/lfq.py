"""Typed wrappers of the LFQ ops: bit quantization and the exact full-codebook entropy (schemas, fakes and autograd:
magvit2/ops/_library.py)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from magvit2.ops import reference
from magvit2.ops.reference import codebook_entropy

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_INDEX_BITS = 62  # one int64 index, sign bit and one spare bit left alone
MAX_ENTROPY_BITS = 32  # lfq_entropy: the tiled path holds O(N 2^ceil(K/2)), never the 2^K average
MAX_AVERAGE_BITS = 24  # lfq_codebook_average returns the whole average: 2^K floats (64 MiB at K = 24)
# Above this many bits lfq_entropy takes the tiled path (lfq_entropy_tiled); at and below it the whole-average op,
# whose (2^Ka, 2^Kb) average is at most 4 MiB and which serves the global mode with one all-reduce of it.
TILED_ABOVE_BITS = 20


class LFQCodes(NamedTuple):
    codes: torch.Tensor
    indices: torch.Tensor | tuple[torch.Tensor, ...]


class LFQEntropy(NamedTuple):
    per_sample_entropy: torch.Tensor
    codebook_entropy: torch.Tensor


def _check_latents(fn: str, z: object) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{fn}: z must be a torch.Tensor of shape (N, K), got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"{fn}: z must be 2-D (N, K), got shape {tuple(z.shape)}")
    if z.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: z must be float16, bfloat16, float32 or float64, got {z.dtype}")
    if z.shape[1] < 1:
        raise ValueError(f"{fn}: z must have K >= 1 channels, got shape {tuple(z.shape)}")


def _group_bits(k: int, factorized_bits) -> list[int]:
    if factorized_bits is None:
        if k > MAX_INDEX_BITS:
            raise ValueError(
                f"lfq_quantize: K = {k} channels do not fit one int64 index (K <= {MAX_INDEX_BITS}); "
                "pass factorized_bits to split them"
            )
        return [k]
    bits = list(factorized_bits)
    if not bits or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in bits):
        raise ValueError(f"lfq_quantize: factorized_bits must be a non-empty list of positive ints, got {bits}")
    if sum(bits) != k:
        raise ValueError(f"lfq_quantize: factorized_bits {bits} sum to {sum(bits)}, but z has K = {k} channels")
    if max(bits) > MAX_INDEX_BITS:
        raise ValueError(f"lfq_quantize: each of factorized_bits must be <= {MAX_INDEX_BITS}, got {bits}")
    return bits


def lfq_quantize(z: torch.Tensor, factorized_bits: list[int] | None = None) -> LFQCodes:
    """Binary LFQ quantization of latents z (N, K), any strides, float16/bfloat16/float32/float64.

    Returns `codes` (N, K) in z.dtype, +1 where z > 0 else -1 (0 -> -1), and `indices`: int64 (N,) with bit i of
    the index <-> channel i (LSB-first); with `factorized_bits=[k1, k2, ...]` a tuple of (N,) indices, one per group
    of consecutive channels, each LSB-first over its own channels (Open-MAGVIT2 AR split [6, 12]: channels 0..5 and
    6..17). Codes carry no gradient (apply the straight-through estimator outside).

    Example:
        >>> codes, idx = lfq_quantize(torch.tensor([[0.3, -1.0, 2.0]]))
        >>> codes.tolist(), idx.tolist()
        ([[1.0, -1.0, 1.0]], [5])
    """
    _check_latents("lfq_quantize", z)
    bits = _group_bits(z.shape[1], factorized_bits)
    codes, indices = torch.ops.magvit2.lfq_quantize.default(z, bits)
    if factorized_bits is None:
        return LFQCodes(codes, indices[0])
    return LFQCodes(codes, tuple(indices.unbind(0)))


def _check_entropy_args(
    fn: str, z: object, inv_temperature: float, eps: float | None = None, max_bits: int = MAX_ENTROPY_BITS
) -> None:
    _check_latents(fn, z)
    if z.shape[1] > max_bits:
        raise ValueError(
            f"{fn}: K = {z.shape[1]} channels means a 2^{z.shape[1]}-entry codebook average; "
            f"K <= {max_bits} is supported"
        )
    if not isinstance(inv_temperature, (int, float)) or not math.isfinite(inv_temperature) or inv_temperature <= 0:
        raise ValueError(f"{fn}: inv_temperature must be a finite number > 0, got {inv_temperature!r}")
    if eps is not None and (not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0):
        raise ValueError(f"{fn}: eps must be a finite number >= 0, got {eps!r}")


def lfq_entropy(
    z: torch.Tensor,
    inv_temperature: float = 100.0,
    eps: float = 0.0,
    group: torch.distributed.ProcessGroup | None = None,
) -> LFQEntropy:
    """Exact LFQ entropies of p(c|z) = softmax(2 * inv_temperature * <z, c>) over all 2^K codes c in {-1, 1}^K.

    z: (N, K) latents, K <= 32, any float dtype. Returns scalar tensors (float64 for float64 input, else float32):
    `per_sample_entropy` = mean over tokens of H(p(.|z)), `codebook_entropy` = -sum_c avg_c log(avg_c + eps) with
    avg the mean of p over the tokens. eps = 1e-5 is the official objective; eps = 0 the true entropy. The N x 2^K
    distribution is never built. Differentiable w.r.t. z. K <= 20: the (2^Ka, 2^Kb) average is built whole, memory
    O(N 2^ceil(K/2) + 2^K). K > 20: the tiled path (lfq_entropy_tiled), which never holds the average: memory
    O(N 2^ceil(K/2)) plus one 2048 x 2048 tile; when z requires grad its forward also computes the codebook
    term's gradient (three GEMMs of N 2^K multiply-adds in all, the backward only scales it).

    group: a process group (or `torch.distributed.group.WORLD`) to take the codebook entropy of the concatenated
    batch of every rank, with gradients to every rank. K <= 20: the average is all-reduced; K > 20: the latents
    are all-gathered (N x K per rank) and every rank runs the tiled product over the whole batch (exact, at
    world-size times the work). The per-sample term stays this rank's mean.

    Example:
        >>> z = torch.randn(2048, 18, requires_grad=True)
        >>> ps, cb = lfq_entropy(z, 100.0, eps=1e-5)
        >>> (ps - cb).backward()
    """
    _check_entropy_args("lfq_entropy", z, inv_temperature, eps)
    t, eps = float(inv_temperature), float(eps)
    if z.shape[1] > TILED_ABOVE_BITS:
        return _tiled_entropy(z, t, eps, group)
    per_sample, codebook, avg = torch.ops.magvit2.lfq_entropy.default(z, t, eps)
    if group is None:
        return LFQEntropy(per_sample, codebook)
    return LFQEntropy(per_sample, codebook_entropy(_all_reduce_average(avg, z.shape[0], group), eps))


def _tiled_entropy(z: torch.Tensor, t: float, eps: float, group) -> LFQEntropy:
    tiled = torch.ops.magvit2.lfq_entropy_tiled.default
    if group is None:
        per_sample, codebook, _ = tiled(z, t, eps, torch.is_grad_enabled() and z.requires_grad, 0)
        return LFQEntropy(per_sample, codebook)
    batch = all_gather_rows(z, group)  # (sum of N over ranks, K)
    _, codebook, _ = tiled(batch, t, eps, torch.is_grad_enabled() and batch.requires_grad, 0)
    x = 4.0 * t * z.to(codebook.dtype)
    per_sample = reference.binary_entropy_from_logits(x).sum(1).sum() / max(z.shape[0], 1)
    return LFQEntropy(per_sample, codebook)


def lfq_codebook_average(z: torch.Tensor, inv_temperature: float = 100.0) -> torch.Tensor:
    """Mean of p(c|z) over the N tokens as a (2^Ka, 2^Kb) matrix, Ka = ceil(K/2): entry [a, b] is the probability
    of code index a + 2^Ka * b. Differentiable; all-reduce it (with gradients) to build a global average, then
    take `codebook_entropy(avg, eps)`."""
    _check_entropy_args("lfq_codebook_average", z, inv_temperature, max_bits=MAX_AVERAGE_BITS)
    return torch.ops.magvit2.lfq_entropy.default(z, float(inv_temperature), 0.0)[2]


def _all_reduce_average(avg: torch.Tensor, n: int, group) -> torch.Tensor:
    import torch.distributed as dist

    total = torch.tensor([float(n)], dtype=avg.dtype, device=avg.device)
    dist.all_reduce(total, group=group)
    return all_reduce_sum(avg * n, group) / total.clamp_min(1.0)


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of `x` over the ranks of `group` (None: the default group), differentiable: every rank's gradient
    reaches every rank."""
    return _AllReduceSum.apply(x, group)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of `group` that carries gradients back to every rank: d(sum)/d(x_r) = the sum of the
    ranks' upstream gradients (a plain all_reduce would drop them; torch.distributed.nn's warns it is deprecated)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_gather_rows(x: torch.Tensor, group=None) -> torch.Tensor:
    """The rows of `x` (N_r, ...) of every rank of `group`, concatenated in rank order (N_r may differ), with
    gradients: each rank's rows receive the sum over ranks of the upstream gradients of those rows."""
    return _AllGatherRows.apply(x, group)


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist

        world, rank = dist.get_world_size(group), dist.get_rank(group)
        count = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
        counts = [torch.empty_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=group)
        rows = [int(c.item()) for c in counts]
        padded = x.new_zeros((max(rows), *x.shape[1:]))  # all_gather needs equal shapes: pad to the longest
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.group, ctx.start, ctx.rows = group, sum(rows[:rank]), x.shape[0]
        return torch.cat([p[:r] for p, r in zip(parts, rows, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.start : ctx.start + ctx.rows], None
