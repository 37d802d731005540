"""Plain-torch reference of the LFQ ops (`lfq_quantize`, `lfq_entropy` and its backward), and the official (naive)
LFQ entropy formula.

The reference kernels run on every device type that has no compiled kernel (NPU included); tests and benchmarks
import them to check and measure the compiled backends. They follow the same conventions bit for bit:

- codes: +1 where z > 0, else -1 (so 0, -0 and NaN give -1);
- indices: LSB-first, bit i of a group's index <-> the group's channel i;
- entropies: computed in float64 for float64 input, float32 otherwise; the codebook average `avg` is a
  (2^Ka, 2^Kb) matrix with Ka = ceil(K / 2), Kb = floor(K / 2), entry [a, b] = p(code a + 2^Ka * b).
"""

from __future__ import annotations

import torch


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the entropy kernels compute (and return) in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def split_bits(k: int) -> tuple[int, int]:
    """Bit groups (Ka, Kb) of the codebook-average matrix: Ka = ceil(K/2) low bits, Kb = floor(K/2) high bits."""
    return (k + 1) // 2, k // 2


def index_to_bits(k: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(2^k, k) table of the 0/1 bits of every index, LSB-first: row j, column i = (j >> i) & 1."""
    j = torch.arange(2**k, device=device)
    return ((j[:, None] >> torch.arange(k, device=device)) & 1).to(dtype)


def lfq_quantize(z: torch.Tensor, group_bits: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) -> codes (N, K) in z.dtype, indices (G, N) int64: the where + mask-sum form."""
    positive = z > 0
    codes = torch.where(positive, 1.0, -1.0).to(z.dtype)
    rows, start = [], 0
    for bits in group_bits:
        mask = 2 ** torch.arange(bits, device=z.device, dtype=torch.int64)
        rows.append((positive[:, start : start + bits].long() * mask).sum(-1))
        start += bits
    indices = torch.stack(rows) if rows else z.new_empty((0, z.shape[0]), dtype=torch.int64)
    return codes, indices


def binary_entropy_from_logits(x: torch.Tensor) -> torch.Tensor:
    """H_b(sigmoid(x)) in nats, stable for any |x|: log1p(e) + |x| e / (1 + e) with e = exp(-|x|)."""
    a = x.abs()
    e = torch.exp(-a)
    # |x| = inf gives inf * 0 in the second term; its limit is 0. NaN stays NaN through log1p.
    tail = torch.where(e > 0, a * e / (1 + e), torch.zeros_like(a))
    return torch.log1p(e) + tail


def bit_group_probs(q0: torch.Tensor, q1: torch.Tensor) -> torch.Tensor:
    """(N, k) per-bit probabilities of 0 and 1 -> (N, 2^k) probabilities of every LSB-first index of the group.

    Built by doubling: after bit i the row holds [P * q0_i, P * q1_i], so bit i is the new most significant bit.
    """
    n, k = q0.shape
    probs = q0.new_ones((n, 1))
    for i in range(k):
        probs = torch.cat([probs * q0[:, i : i + 1], probs * q1[:, i : i + 1]], dim=1)
    return probs


def codebook_entropy(avg: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """-sum avg * log(avg + eps) over every entry (0 log 0 = 0), as the official codebook term."""
    return -torch.xlogy(avg, avg + eps).sum()


def lfq_entropy(z: torch.Tensor, inv_temperature: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact per-sample and codebook entropy of p(c|z) = softmax(2 t <z, c>) over all 2^K codes, O(N 2^(K/2)).

    Returns (per_sample, codebook, avg); see the module docstring for the layout of avg.
    """
    n, _ = z.shape
    x = 4.0 * inv_temperature * z.to(opmath_dtype(z.dtype))
    per_sample = binary_entropy_from_logits(x).sum(1).sum() / max(n, 1)
    prob_a, prob_b = group_probs(x)
    avg = prob_a.t() @ prob_b / max(n, 1)  # (2^Ka, N) @ (N, 2^Kb)
    return per_sample, codebook_entropy(avg, eps), avg


def group_probs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled logits x = 4 t z (N, K) -> P_A (N, 2^Ka), P_B (N, 2^Kb): probabilities of the low and high bit groups."""
    ka, _ = split_bits(x.shape[1])
    q1, q0 = torch.sigmoid(x), torch.sigmoid(-x)
    return bit_group_probs(q0[:, :ka], q1[:, :ka]), bit_group_probs(q0[:, ka:], q1[:, ka:])


def codebook_entropy_grad(avg: torch.Tensor, eps: float) -> torch.Tensor:
    """d/d avg of -sum avg log(avg + eps). At eps = 0 the slope at avg = 0 is infinite: avg is clamped to the
    smallest normal number there, so the gradient stays finite (-(log tiny + 1), about 86 in float32)."""
    if eps == 0.0:
        return -(avg.clamp_min(torch.finfo(avg.dtype).tiny).log() + 1.0)
    return -((avg + eps).log() + avg / (avg + eps))


def lfq_entropy_backward(
    grad_per_sample: torch.Tensor,
    grad_codebook: torch.Tensor,
    grad_avg: torch.Tensor | None,
    z: torch.Tensor,
    avg: torch.Tensor,
    inv_temperature: float,
    eps: float,
) -> torch.Tensor:
    """Closed-form gradient of lfq_entropy w.r.t. z (the C++ kernel computes the same expression)."""
    n, k = z.shape
    ka, kb = split_bits(k)
    scale = 4.0 * inv_temperature
    x = scale * z.to(avg.dtype)
    s1, s0 = torch.sigmoid(x), torch.sigmoid(-x)
    w = s1 * s0
    # d H_b(sigmoid(x)) / dx = -x s (1 - s); written so that |x| = inf gives 0 and NaN stays NaN.
    dh = torch.where(w == 0, torch.zeros_like(w), -x * w)
    grad = grad_per_sample * scale / max(n, 1) * dh
    d_avg = grad_codebook * codebook_entropy_grad(avg, eps)
    if grad_avg is not None:
        d_avg = d_avg + grad_avg
    d_avg = d_avg / max(n, 1)
    prob_a, prob_b = group_probs(x)
    g_a = (prob_b @ d_avg.t()) * prob_a  # (N, 2^Ka): dL/dlog P_A
    g_b = (prob_a @ d_avg) * prob_b  # (N, 2^Kb)
    bits_a = index_to_bits(ka, device=z.device, dtype=avg.dtype)
    bits_b = index_to_bits(kb, device=z.device, dtype=avg.dtype)
    # dL/dlog q_i(1) sums g over the indices whose bit i is set, dL/dlog q_i(0) over the others.
    d1 = torch.cat([g_a @ bits_a, g_b @ bits_b], dim=1)
    d0 = torch.cat([g_a @ (1 - bits_a), g_b @ (1 - bits_b)], dim=1)
    grad = grad + scale * (d1 * s0 - d0 * s1)
    return grad.to(z.dtype)


def per_sample_entropy_grad(z: torch.Tensor, inv_temperature: float) -> torch.Tensor:
    """d per_sample / dz (N, K) in the entropy dtype: the per-sample term's gradient, elementwise (both paths)."""
    n = z.shape[0]
    scale = 4.0 * inv_temperature
    x = scale * z.to(opmath_dtype(z.dtype))
    w = torch.sigmoid(x) * torch.sigmoid(-x)
    # d H_b(sigmoid(x)) / dx = -x s (1 - s): 0 at |x| = inf, NaN stays NaN.
    return torch.where(w == 0, torch.zeros_like(w), -x * w) * (scale / max(n, 1))


TILE_EDGE = 2048  # the C++ kernel's default tile edge of M (tile = 0)


def lfq_entropy_tiled(
    z: torch.Tensor, inv_temperature: float, eps: float, need_grad: bool, tile: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tiled path: per-sample and codebook entropy without the 2^K average, K <= 32.

    M = P_A^T P_B / N is taken in (tile x tile) blocks (tile = 0: TILE_EDGE); each block adds its
    -sum M log(M + eps) (in float64) and, with `need_grad`, its D = dH/dM / N to dH/dP_A = P_B D^T and
    dH/dP_B = P_A D. Returns (per_sample, codebook, codebook_grad) with codebook_grad = d codebook / dz (N, K) in
    the entropy dtype, or an empty (0, K) tensor without `need_grad`. Memory O(N 2^ceil(K/2) + tile^2).
    """
    n, k = z.shape
    dtype = opmath_dtype(z.dtype)
    ka, kb = split_bits(k)
    edge = tile if tile > 0 else TILE_EDGE
    ta, tb = min(2**ka, edge), min(2**kb, edge)
    x = 4.0 * inv_temperature * z.to(dtype)
    per_sample = binary_entropy_from_logits(x).sum(1).sum(dtype=torch.float64) / max(n, 1)
    prob_a, prob_b = group_probs(x)
    inv_n = 1.0 / max(n, 1)
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    g_a = torch.zeros_like(prob_a) if need_grad else None
    g_b = torch.zeros_like(prob_b) if need_grad else None
    for a0 in range(0, 2**ka, ta):
        for b0 in range(0, 2**kb, tb):
            m = prob_a[:, a0 : a0 + ta].t() @ prob_b[:, b0 : b0 + tb] * inv_n  # (ta, tb) tile of M
            total -= torch.xlogy(m, m + eps).sum(dtype=torch.float64)
            if need_grad:
                d = codebook_entropy_grad(m, eps) * inv_n
                g_a[:, a0 : a0 + ta] += prob_b[:, b0 : b0 + tb] @ d.t()
                g_b[:, b0 : b0 + tb] += prob_a[:, a0 : a0 + ta] @ d
    if not need_grad:
        return per_sample.to(dtype), total.to(dtype), x.new_zeros((0, k))
    grad = 4.0 * inv_temperature * bit_grad(x, g_a * prob_a, g_b * prob_b)
    return per_sample.to(dtype), total.to(dtype), grad


def bit_grad(x: torch.Tensor, g_a: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
    """dL/dlog P_A (N, 2^Ka), dL/dlog P_B (N, 2^Kb) -> dL/dx (N, K) through the bit probabilities of x."""
    ka, kb = g_a.shape[1].bit_length() - 1, g_b.shape[1].bit_length() - 1
    bits_a = index_to_bits(ka, device=x.device, dtype=x.dtype)
    bits_b = index_to_bits(kb, device=x.device, dtype=x.dtype)
    # dL/dlog q_i(1) sums g over the indices whose bit i is set, dL/dlog q_i(0) over the others.
    d1 = torch.cat([g_a @ bits_a, g_b @ bits_b], dim=1)
    d0 = torch.cat([g_a.sum(1, keepdim=True) - g_a @ bits_a, g_b.sum(1, keepdim=True) - g_b @ bits_b], dim=1)
    s1, s0 = torch.sigmoid(x), torch.sigmoid(-x)
    return d1 * s0 - d0 * s1


def lfq_entropy_naive(
    z: torch.Tensor, inv_temperature: float = 100.0, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official formula: full (N, 2^K) softmax over the materialised codebook. O(N 2^K) memory.

    Kept for tests (brute force) and benchmarks (the baseline we replace); never used by the package.
    """
    k = z.shape[1]
    codebook = index_to_bits(k, device=z.device, dtype=z.dtype) * 2 - 1  # (2^K, K), row j = code of index j
    logits = 2 * inv_temperature * (z @ codebook.t())
    probs = torch.softmax(logits, dim=-1)
    per_sample = -(probs * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    avg = probs.mean(0)
    return per_sample, codebook_entropy(avg, eps)
