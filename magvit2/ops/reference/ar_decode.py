"""Plain-torch reference of `decode_block` (one pre-norm transformer block for the newest position of R rows) and
`decode_logits` (the step's head).

Arithmetic as `ARTransformer`'s blocks, on the weights as the block holds them (nn.Linear's (out, in)): RMSNorm in
float32 then its weight, RoPE in float32 on interleaved pairs, attention over the written prefix of the KV cache,
SwiGLU. The C++ kernel runs these same ATen calls for every dtype but float32 (so they agree bit for bit) and its
own loops for float32 (within float32 rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as `RMSNorm.forward`: normalised in float32, cast back, times the weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)).type_as(x) * weight


def rotate(x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """x (..., D) rotated by one RoPE table row (D / 2, 2) of (cos, sin), in float32 (as `apply_rope`)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., D/2, 2)
    cos, sin = row[:, 0], row[:, 1]
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2).type_as(x)


def check_block(x, attention_norm, wqkv, wo, ffn_norm, w1, w3, w2, k_cache, v_cache, rope, pos, eps) -> int:
    """The CPU kernel's argument checks (csrc/common/checks.h), for the devices the reference serves; returns pos."""

    def bad(message: str) -> ValueError:
        return ValueError("decode_block: " + message)

    if x.dim() != 2 or not x.is_floating_point():
        raise bad(f"x must be a floating (rows, dim) tensor, got {x.dtype} {tuple(x.shape)}")
    rows, dim = x.shape
    kc = k_cache
    if kc.dim() != 4 or kc.shape[0] != rows or kc.shape[1] * kc.shape[3] != dim or kc.shape[3] % 2:
        raise bad(
            f"k_cache must be (rows, heads, length, head_dim) with rows = {rows}, heads * head_dim = {dim} and an "
            f"even head_dim, got {tuple(kc.shape)}"
        )
    if v_cache.shape != kc.shape:
        raise bad(f"v_cache must match k_cache {tuple(kc.shape)}, got {tuple(v_cache.shape)}")
    for c in (kc, v_cache):
        if c.dtype != x.dtype or not c.is_contiguous():
            raise bad(
                f"k_cache and v_cache must be contiguous {x.dtype} tensors, got {c.dtype}"
                + ("" if c.is_contiguous() else " (not contiguous)")
            )
    hidden = w1.shape[0] if w1.dim() == 2 else -1
    for name, w, size in (("attention_norm", attention_norm, (dim,)), ("wqkv", wqkv, (3 * dim, dim)),
                          ("wo", wo, (dim, dim)), ("ffn_norm", ffn_norm, (dim,)), ("w1", w1, (hidden, dim)),
                          ("w3", w3, (hidden, dim)), ("w2", w2, (dim, hidden))):  # fmt: skip
        if tuple(w.shape) != size or w.dtype != x.dtype or (hidden < 1 and len(size) == 2):
            raise bad(
                f"{name} must be {size} (as the block stores it, w1 and w3 (hidden, dim), w2 (dim, hidden)) in "
                f"{x.dtype}, got {tuple(w.shape)} {w.dtype}"
            )
    half = kc.shape[3] // 2
    if rope.dim() != 3 or rope.shape[1:] != (half, 2) or rope.dtype != torch.float32:
        raise bad(
            f"rope must be a float32 (positions, head_dim / 2, 2) = (L, {half}, 2) table, got {rope.dtype} "
            f"{tuple(rope.shape)}"
        )
    if pos.numel() != 1 or pos.is_floating_point() or pos.dtype == torch.bool:
        raise bad(f"pos must be one integer, got {pos.dtype} {tuple(pos.shape)}")
    n, limit = int(pos), min(kc.shape[2], rope.shape[0])
    if not 0 <= n < limit:
        raise bad(f"pos must be in [0, {limit}) (cache length {kc.shape[2]}, rope rows {rope.shape[0]}), got {n}")
    if not (math.isfinite(eps) and eps >= 0):
        raise bad(f"eps must be a finite number >= 0, got {eps}")
    return n


def decode_block(
    x: torch.Tensor,
    attention_norm: torch.Tensor,
    wqkv: torch.Tensor,
    wo: torch.Tensor,
    ffn_norm: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    rope: torch.Tensor,
    pos: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """x (R, dim) at cache position `pos` -> (R, dim); writes k, v at `pos` of the (R, H, S, D) caches.
    Weights as the block holds them: RMSNorm weights (dim,), wqkv (3 dim, dim), wo (dim, dim), w1 and w3
    (hidden, dim), w2 (dim, hidden)."""
    n = check_block(x, attention_norm, wqkv, wo, ffn_norm, w1, w3, w2, k_cache, v_cache, rope, pos, eps)
    r, dim = x.shape
    heads, head_dim = k_cache.shape[1], k_cache.shape[3]
    qkv = F.linear(rms(x, attention_norm, eps), wqkv).view(r, 3, heads, head_dim)
    qk = rotate(qkv[:, :2], rope[n])  # (R, 2, H, D)
    k_cache[:, :, n] = qk[:, 1]
    v_cache[:, :, n] = qkv[:, 2]
    att = F.scaled_dot_product_attention(qk[:, 0, :, None], k_cache[:, :, : n + 1], v_cache[:, :, : n + 1])
    h = x + F.linear(att.reshape(r, dim), wo)  # att: (R, H, 1, D)
    hn = rms(h, ffn_norm, eps)
    return h + F.linear(F.silu(F.linear(hn, w1)) * F.linear(hn, w3), w2)


def decode_logits(
    z: torch.Tensor, norm: torch.Tensor, head: torch.Tensor, eps: float, cfg_scale: float | None
) -> torch.Tensor:
    """z (R, dim) -> logits: RMSNorm (weight `norm`), then over [cond; uncond] rows (cfg_scale given)
    torch.lerp(uncond, cond, s) = uncond + s (cond - uncond), (R / 2, dim), then the head (V, dim) as nn.Linear."""
    if z.dim() != 2 or not z.is_floating_point():
        raise ValueError(f"decode_logits: z must be a floating (rows, dim) tensor, got {z.dtype} {tuple(z.shape)}")
    dim = z.shape[1]
    if norm.shape != (dim,) or norm.dtype != z.dtype:
        raise ValueError(f"decode_logits: norm must be ({dim},) in {z.dtype}, got {tuple(norm.shape)} {norm.dtype}")
    if head.dim() != 2 or head.shape[1] != dim or head.shape[0] < 1 or head.dtype != z.dtype:
        raise ValueError(
            f"decode_logits: head must be (vocab, dim) with dim = {dim} (as nn.Linear stores it) in {z.dtype}, got "
            f"{tuple(head.shape)} {head.dtype}"
        )
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"decode_logits: eps must be a finite number >= 0, got {eps}")
    if cfg_scale is not None and (not math.isfinite(cfg_scale) or z.shape[0] % 2):
        raise ValueError(
            f"decode_logits: with cfg_scale, z must hold [cond; uncond] rows (an even count) and the scale must be "
            f"finite, got {z.shape[0]} rows, cfg_scale {cfg_scale}"
        )
    zn = rms(z, norm, eps)
    if cfg_scale is not None:
        cond, uncond = zn.chunk(2)
        zn = torch.lerp(uncond, cond, cfg_scale)
    return F.linear(zn, head)
