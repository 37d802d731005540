"""Plain-torch reference of `magvit2::sample_tokens`, written so that the C++ kernel can match it bit for bit.

Every decision uses only IEEE basic operations in a fixed order, so two implementations agree exactly:
- guidance and temperature in float32: x = u + (c - u) * s, then x / t (separate roundings, no FMA);
- top-k: keep x >= the k-th largest x (ties at the threshold are kept);
- weights w = exp_det(x - max) in float32, where exp_det is a fixed range reduction + degree-7 polynomial and an
  exact power of two built from bits (no libm exp, whose last bit differs between libraries), ~1 ulp; 0 below
  exp(-87), so that every weight kept is a normal float; weights are summed in float64;
- top-p (a mass threshold, no visiting order): the kept tokens are totally ordered by x descending, ties (-0.0 ==
  +0.0 included) lower index first; token i stays iff M(i) <= p * Z, where M(i) sums the weights of the kept tokens
  strictly before i in that order and Z all kept weights, both sequentially in index order. A sequential float64
  sum of non-negative terms never decreases when terms join it, so M never decreases along the order and the
  nucleus is the prefix of the order down to a cutoff token: a kernel finds it by a threshold search over keys
  (bisection, or a coarse search then an exact check) at a cost independent of the nucleus width, with no sort;
- draw: u from a counter-based stream (SplitMix64 of seed, offset, row; 53-bit uniform), then the first index (in
  index order) whose running sum of kept weights exceeds u * (sum of kept weights); sequential float64 sums.
top_k == 1 is greedy: the first index of the largest x. NaN logits (also a logit infinite in both logits and uncond,
whose guidance is inf - inf), temperature <= 0 and rows without a finite logit are errors.
"""

from __future__ import annotations

import torch

MASK64 = (1 << 64) - 1
GOLDEN, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
# float32 exp (Cephes expf): Cody-Waite ln 2 (LN2_HI * n is exact for |n| < 2^15), then
# exp(r) = 1 + r + r^2 * P(r) on |r| <= ln2 / 2. Each constant is used as float32 (Python float rounded to nearest).
INV_LN2, LN2_HI, LN2_LO = 1.44269504088896341, 0.693359375, -2.12194440e-4
EXP_CUTOFF = -87.0  # weights below exp(-87) are 0: exp(-87) > 2^-126, so no weight or power of two is subnormal
EXP_COEFFS = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1]


def uniform(seed: int, offset: int, row: int) -> float:
    """53-bit uniform in [0, 1) for (seed, offset, row): SplitMix64 finaliser of a 64-bit key (Python ints: exact)."""
    z = ((seed * GOLDEN) ^ (offset * MIX1 + row)) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    z ^= z >> 31
    return (z >> 11) * 2.0**-53


def exp_det(d: torch.Tensor) -> torch.Tensor:
    """exp(d) for float32 d <= 0 (-inf included) to ~1 ulp with a fixed sequence of float32 roundings; 0 below
    EXP_CUTOFF. The argument is clamped to the cutoff first, so no element meets an infinity or a NaN."""
    dc = d.clamp(min=EXP_CUTOFF)
    n = torch.round(dc * INV_LN2)  # half-to-even, as nearbyint; n in [-126, 0]
    r = (dc - n * LN2_HI) - n * LN2_LO  # |r| <= ln2 / 2
    p = torch.full_like(r, EXP_COEFFS[0])
    for c in EXP_COEFFS[1:]:
        p = p * r + c
    p = p * (r * r) + r
    p = p + 1.0
    scale = ((n.int() + 127) << 23).view(torch.float32)  # 2^n, exact
    return torch.where(d < EXP_CUTOFF, torch.zeros_like(p), p * scale)


def combine(logits: torch.Tensor, uncond: torch.Tensor | None, cfg_scale: float, temperature: float) -> torch.Tensor:
    x = logits.float()
    if uncond is not None:
        u = uncond.float()
        x = u + (x - u) * torch.tensor(cfg_scale, dtype=torch.float32)
    return x / torch.tensor(temperature, dtype=torch.float32)


def masked_sum(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(R, V) float64 weights >= 0 and a mask -> (R,): the sequential float64 sum of the masked weights in index
    order (adding the +0.0 of an unmasked token changes no partial sum)."""
    return torch.where(mask, w, torch.zeros((), dtype=torch.float64)).cumsum(dim=1)[:, -1]


def nucleus(x: torch.Tensor, w: torch.Tensor, keep: torch.Tensor, top_p: float) -> torch.Tensor:
    """(R, V) x, float64 weights and kept flags -> (R, V) bool: the top-p nucleus of the module docstring.

    The reference may sort: it ranks the kept tokens (x descending, ties lower index first) and bisects on the
    rank for the last token with M <= p * Z, each probe one masked sequential sum over the row.
    """
    rows, vocab = x.shape
    limit = masked_sum(w, keep) * top_p  # (R,): p * Z
    x0 = torch.where(x == 0, torch.zeros((), dtype=x.dtype), x)  # -0.0 ties +0.0
    order = torch.sort(torch.where(keep, x0, float("-inf")), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(vocab, device=x.device).expand(rows, vocab))
    lo = torch.zeros(rows, dtype=torch.int64, device=x.device)  # rank 0 (the maximum) has M = 0: always in
    hi = keep.sum(dim=1) - 1  # the last kept rank
    while bool((lo < hi).any()):
        mid = (lo + hi + 1) // 2
        inside = masked_sum(w, keep & (rank < mid[:, None])) <= limit  # M of the token of rank mid
        lo = torch.where(inside, mid, lo)
        hi = torch.where(inside, hi, mid - 1)
    return keep & (rank <= lo[:, None])


def sample_tokens(
    logits: torch.Tensor,
    uncond: torch.Tensor | None,
    cfg_scale: float,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    offset: int,
) -> torch.Tensor:
    """(R, V) logits (and optional (R, V) unconditional logits) -> (R,) int64 token ids."""
    if not temperature > 0:
        raise ValueError(f"sample_tokens: temperature must be > 0 (top_k=1 is greedy), got {temperature}")
    nan_rows = torch.isnan(logits).any(dim=1) | (torch.isnan(uncond).any(dim=1) if uncond is not None else False)
    if bool(nan_rows.any()):
        raise ValueError(f"sample_tokens: row {int(nan_rows.nonzero()[0])} has NaN logits")
    x = combine(logits, uncond, cfg_scale, temperature)  # (R, V) float32
    nan_rows = torch.isnan(x).any(dim=1)  # inf - inf in the guidance
    if bool(nan_rows.any()):
        bad = int(nan_rows.nonzero()[0])
        raise ValueError(
            f"sample_tokens: row {bad} has NaN logits after guidance (a logit infinite in both logits and uncond)"
        )
    rows, vocab = x.shape
    out = torch.empty(rows, dtype=torch.int64, device=x.device)
    if rows == 0:
        return out
    top = x.max(dim=1).values
    if bool((top == float("-inf")).any()):
        bad = int((top == float("-inf")).nonzero()[0])
        raise ValueError(f"sample_tokens: row {bad} has no finite logit")
    if bool((top == float("inf")).any()):
        bad = int((top == float("inf")).nonzero()[0])
        raise ValueError(f"sample_tokens: row {bad} has an infinite logit (after guidance and temperature)")
    if top_k == 1:
        return x.argmax(dim=1)  # first index of the maximum
    keep = torch.ones_like(x, dtype=torch.bool)
    if 0 < top_k < vocab:
        keep = x >= torch.topk(x, top_k, dim=1).values[:, -1:]
    w = torch.where(keep, exp_det(x - top[:, None]), torch.zeros((), dtype=torch.float32)).double()
    keep = keep & (w > 0)  # tokens whose weight underflows to 0 can never be drawn
    if top_p < 1.0:
        keep = keep & nucleus(x, w, keep, top_p)
        w = torch.where(keep, w, torch.zeros((), dtype=torch.float64))
    cum = w.cumsum(dim=1)
    u = torch.tensor([uniform(seed, offset, r) for r in range(rows)], dtype=torch.float64, device=x.device)
    target = u * cum[:, -1]
    above = cum > target[:, None]
    last_kept = vocab - 1 - keep.flip(1).int().argmax(dim=1)
    return torch.where(above.any(dim=1), above.int().argmax(dim=1), last_kept)
