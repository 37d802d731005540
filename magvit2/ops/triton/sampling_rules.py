"""The determinism rules of `sample_tokens`, mirrored in Triton: the one place to re-sync with the reference.

magvit2/ops/reference/sampling.py defines the tokens bit for bit; every helper here reproduces one of its rules
with the same IEEE operations in the same order (the kernel is launched with `enable_fp_fusion=False`, so no
multiply-add is contracted into an FMA on the GPU):

- `combine`: guidance and temperature in float32, u + (c - u) * s, then x / t rounded to nearest (`div_rn`; a
  plain `/` is an approximate division on the GPU);
- `exp_det`: the float32 exp of the float32 x - max: clamp to EXP_CUTOFF, magic-number rounding (== torch.round
  below 2^22), Cody-Waite reduction, Horner polynomial, 2^n built from bits, 0 below EXP_CUTOFF; constants imported
  from the reference and rounded to float32 here as the reference's tensor ops round them, so they cannot drift;
- `uniform`: the SplitMix64 finaliser of (seed, offset, row) in uint64, 53-bit uniform;
- `order_key`: the visiting order of top-k/top-p (x descending) as an integer key, -0.0 folded onto +0.0 because
  the reference compares floats (the two zeros tie there);
- `seq_prefix`: the reference's sequential float64 sums (cumsum in a fixed order), computed exactly in parallel;
- `radix_select`: the k-th largest x for top-k (kept: x >= it, ties included), no sort;
- `nucleus`: top-p, a mass threshold: kept token i stays iff M(i) <= top_p x total, where M(i) sums the weights of
  the kept tokens before i in the order x descending (ties: lower index first) and total all kept weights, both
  sequentially in index order. M never decreases along the order, so the cutoff is the smallest key K whose mass
  above, S(K), is <= the limit: a bisection over the 63-bit key, one exact masked pass per step, whatever the
  nucleus width;
- `draw`: the first kept token (index order) whose running sum exceeds u x total, else the last kept token.

Everything about which token comes out is here; sampling.py only runs the phases (and owns the scratch layout).

`seq_prefix` is why the kernel needs no serial loop over the vocabulary. While a running sum s stays in one binade
[2^e, 2^(e+1)) every rounded partial sum is an integer multiple of u = 2^(e-52), and fl(s + w) = s + u * (q + c)
with q = floor(w / u) and c = [frac(w / u) > 1/2], exactly. So a window of partial sums is an integer cumsum
(order-free, exact in any reduction tree) until the first element that either ties (frac = 1/2: round-half-even
looks at the parity of the sum) or leaves the binade; that one element is added in float64 as the reference does,
and the window restarts behind it. Restarts happen once per binade the sum crosses and at ties (both rare after
the first few terms), so a 4096-wide window costs a handful of integer scans instead of 4096 dependent adds.
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl

from magvit2.ops.reference import sampling as ref

assert len(ref.EXP_COEFFS) == 6, "exp_det below unrolls 6 Horner coefficients: re-sync with the reference"


def _f32(value: float) -> float:
    """value rounded to float32 (to nearest), as the reference's float32 tensor ops use a Python float constant."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


GOLDEN = tl.constexpr(ref.GOLDEN)
MIX1 = tl.constexpr(ref.MIX1)
MIX2 = tl.constexpr(ref.MIX2)
# float32 constants held as the Python floats of their float32 values: Triton's own rounding of them is then exact
LN2_HI = tl.constexpr(_f32(ref.LN2_HI))
LN2_LO = tl.constexpr(_f32(ref.LN2_LO))
INV_LN2 = tl.constexpr(_f32(ref.INV_LN2))
EXP_CUTOFF = tl.constexpr(_f32(ref.EXP_CUTOFF))
C0 = tl.constexpr(_f32(ref.EXP_COEFFS[0]))
C1 = tl.constexpr(_f32(ref.EXP_COEFFS[1]))
C2 = tl.constexpr(_f32(ref.EXP_COEFFS[2]))
C3 = tl.constexpr(_f32(ref.EXP_COEFFS[3]))
C4 = tl.constexpr(_f32(ref.EXP_COEFFS[4]))
C5 = tl.constexpr(_f32(ref.EXP_COEFFS[5]))
ROUND32 = tl.constexpr(12582912.0)  # 1.5 * 2^23: (y + ROUND32) - ROUND32 == round-half-even(y) in float32, |y| < 2^22
TWO52 = tl.constexpr(4503599627370496.0)
INV_TWO52 = tl.constexpr(2.0**-52)
TWO_M53 = tl.constexpr(2.0**-53)
TWO53 = tl.constexpr(9007199254740992.0)
TWO53_INT = tl.constexpr(2**53)


def split_u64(value: int) -> tuple[int, int]:
    """A 64-bit pattern as two non-negative 32-bit halves (kernel arguments with one fixed meaning)."""
    value &= ref.MASK64
    return value >> 32, value & 0xFFFFFFFF


@triton.jit
def join_u64(hi, lo):
    return (hi.to(tl.uint64) << 32) | lo.to(tl.uint64)


@triton.jit
def combine(c, u, cfg_scale, temperature, HAS_UNCOND: tl.constexpr):
    """float32 logits (and unconditional logits) -> x, as reference/sampling.py's combine."""
    x = c
    if HAS_UNCOND:
        x = u + (c - u) * cfg_scale
    return tl.math.div_rn(x, tl.zeros_like(x) + temperature)


@triton.jit
def exp_det(d):
    """float32 exp(d) for float32 d = x - max <= 0 as reference/sampling.py's exp_det (same roundings, same constants).

    The clamp to [EXP_CUTOFF, 0] is the reference's clamp to the cutoff (-inf becomes the cutoff, 0 either way);
    its upper end only matters in rows that raise (an infinite logit: d = +inf would make n NaN).
    """
    dc = tl.minimum(tl.maximum(d, EXP_CUTOFF), 0.0)
    n = (dc * INV_LN2 + ROUND32) - ROUND32  # n in [-126, 0]
    r = (dc - n * LN2_HI) - n * LN2_LO
    p = tl.zeros_like(r) + C0
    p = p * r + C1
    p = p * r + C2
    p = p * r + C3
    p = p * r + C4
    p = p * r + C5
    p = p * (r * r) + r
    p = p + 1.0
    scale = ((n.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)  # 2^n, exact (normal: n >= -126)
    return tl.where(d < EXP_CUTOFF, 0.0, p * scale)


@triton.jit
def uniform(seed, offset, row):
    """53-bit uniform in [0, 1) of (seed, offset, row), all uint64: reference/sampling.py's uniform."""
    z = (seed * GOLDEN) ^ (offset * MIX1 + row.to(tl.uint64))
    z = (z ^ (z >> 30)) * MIX1
    z = (z ^ (z >> 27)) * MIX2
    z = z ^ (z >> 31)
    return (z >> 11).to(tl.float64) * TWO_M53


@triton.jit
def order_key(x):
    """float32 -> int64 in [0, 2^32), increasing with x; -0.0 and +0.0 share one key (they compare equal)."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True).to(tl.int64)
    return tl.where(bits >= 0, bits + 2147483648, -1 - bits)


@triton.jit
def seq_prefix(w, s, WIN: tl.constexpr):
    """Sequential float64 prefix sums of a window: p[j] = fl(...fl(fl(s + w[0]) + w[1])... + w[j]), and p[-1].

    w: (WIN,) float64, finite, >= 0 (0 on padding lanes); s: running sum (float64 scalar, 0 or >= 2^-1022).
    Exact: equals torch.cumsum over [s, w...] on the CPU, bit for bit (see the module docstring).
    """
    idx = tl.arange(0, WIN)
    p = tl.zeros([WIN], tl.float64)
    start = 0
    while start < WIN:
        e = ((s.to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023
        e = tl.where(s == 0.0, 0, e)  # s == 0 has no binade: every positive w below is a scalar step then
        down = ((1023 + e) << 52).to(tl.float64, bitcast=True)  # 2^e
        up = ((1023 - e) << 52).to(tl.float64, bitcast=True)  # 2^-e
        base = ((s * TWO52) * up).to(tl.int64)  # s / u, an integer in [2^52, 2^53)
        # w / u, exact below the clamp (w >= 2^(e+1) leaves the binade anyway; the min keeps the product finite)
        ratio = tl.minimum((tl.minimum(w, 4.0 * down) * TWO52) * up, TWO53)
        q = ratio.to(tl.int64)
        frac = ratio - q.to(tl.float64)
        live = idx >= start
        sums = base + tl.cumsum(tl.where(live, q + (frac > 0.5).to(tl.int64), 0), 0)
        # (a scalar condition is spread with where, not &: the interpreter splats scalar booleans as floats)
        bad = live & ((sums >= TWO53_INT) | (frac == 0.5) | tl.where(w > 0.0, s == 0.0, False))
        first = tl.min(tl.where(bad, idx, WIN))
        value = (sums.to(tl.float64) * INV_TWO52) * down
        p = tl.where(live & (idx < first), value, p)
        before = tl.where(first > start, tl.sum(tl.where(idx == first - 1, value, 0.0)), s)
        after = before + tl.sum(tl.where(idx == first, w, 0.0))  # the reference's own float64 add
        p = tl.where(idx == first, after, p)
        s = tl.where(first < WIN, after, before)
        start = first + 1
    return p, s


POS_MAX = tl.constexpr(2**31 - 1)  # kept-list positions sit in the low 31 bits of the visiting key
NO_BOUND = tl.constexpr(2**63 - 1)  # above every key


@triton.jit
def visit_key(x, pos):
    """63-bit key of a kept token, decreasing in the top-p visiting order: x descending, then kept-list position
    (= index) ascending; the position comes back as POS_MAX - (key & POS_MAX)."""
    return (order_key(x) << 31) | (POS_MAX - pos.to(tl.int64))


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
def mass_above(kept_key, kept_w, nk, bound, BLOCK: tl.constexpr):
    """S(bound): the sequential float64 sum, in index order, of the kept weights whose key is > bound."""
    offs = tl.arange(0, BLOCK)
    s = tl.zeros([], tl.float64)
    for c0 in range(0, nk, BLOCK):
        j = c0 + offs
        key = tl.load(kept_key + j, mask=j < nk, other=-1)
        _, s = seq_prefix(tl.load(kept_w + j, mask=(j < nk) & (key > bound), other=0.0), s, BLOCK)
    return s


@triton.jit
def nucleus(kept_key, kept_w, nk, top_p, BLOCK: tl.constexpr):
    """top-p: zero the weights of the kept tokens outside the nucleus (limit = top_p x the index-order total).

    The cutoff is the smallest key K with S(K) <= limit (S never grows with K, and the smallest such K is a kept
    token's key: S changes only there); bisection between the smallest and the largest kept key, where S is 0.
    """
    offs = tl.arange(0, BLOCK)
    total = tl.zeros([], tl.float64)
    lo = tl.full([], NO_BOUND, tl.int64)
    hi = tl.full([], -1, tl.int64)
    for c0 in range(0, nk, BLOCK):
        j = c0 + offs
        _, total = seq_prefix(tl.load(kept_w + j, mask=j < nk, other=0.0), total, BLOCK)
        key = tl.load(kept_key + j, mask=j < nk, other=-1)
        lo = tl.minimum(lo, tl.min(tl.where(j < nk, key, NO_BOUND)))
        hi = tl.maximum(hi, tl.max(key))
    limit = total * top_p
    while lo < hi:  # invariant: S(hi) <= limit, and S(lo - 1) > limit or lo is the smallest kept key
        mid = lo + (hi - lo) // 2
        inside = mass_above(kept_key, kept_w, nk, mid, BLOCK) <= limit
        hi = tl.where(inside, mid, hi)
        lo = tl.where(inside, lo, mid + 1)
    for c0 in range(0, nk, BLOCK):
        j = c0 + offs
        outside = (j < nk) & (tl.load(kept_key + j, mask=j < nk, other=0) < lo)
        tl.store(kept_w + j, 0.0, mask=outside)
    tl.debug_barrier()


@triton.jit
def draw(kept_idx, kept_w, nk, u, BLOCK: tl.constexpr):
    """The drawn token: the first kept token whose running sum (index order) exceeds u x the total, else the last
    kept token with a positive weight. The running sums overwrite kept_w."""
    offs = tl.arange(0, BLOCK)
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
    target = u * s
    hit = nk
    for c0 in range(0, nk, BLOCK):
        j = c0 + offs
        ok = j < nk
        above = ok & (tl.load(kept_w + j, mask=ok, other=0.0) > target)
        hit = tl.minimum(hit, tl.min(tl.where(above, j, nk)))
    pick = tl.maximum(tl.where(hit < nk, hit, last), 0)
    return tl.load(kept_idx + pick, mask=nk > 0, other=0)
