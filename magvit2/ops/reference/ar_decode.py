"""Plain-torch reference of `decode_block` (one pre-norm transformer block for the newest position of R rows) and
`decode_logits` (the step's head).

Arithmetic as `ARTransformer`'s blocks: RMSNorm in float32 (its weight folded into the next projection by the
caller), RoPE in float32 on interleaved pairs, attention over the written prefix of the KV cache, SwiGLU. The C++
kernel runs these same ATen calls for every dtype but float32 (so they agree bit for bit) and its own loops for
float32 (within float32 rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without the weight, in float32 (as `RMSNorm.forward`)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)).type_as(x)


def rotate(x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """x (..., D) rotated by one RoPE table row (D / 2, 2) of (cos, sin), in float32 (as `apply_rope`)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., D/2, 2)
    cos, sin = row[:, 0], row[:, 1]
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2).type_as(x)


def dense(w: torch.Tensor) -> torch.Tensor:
    """A decode weight as (in, out): 16-column panels (out / 16, in, 16) put back side by side."""
    return w.permute(1, 0, 2).reshape(w.shape[1], -1) if w.dim() == 3 else w


def weight_in(w: torch.Tensor) -> int:
    """in of a decode weight (in, out) or of its panels (out / 16, in, 16); -1 for anything else."""
    return w.shape[1] if w.dim() == 3 else (w.shape[0] if w.dim() == 2 else -1)


def weight_out(w: torch.Tensor) -> int:
    """out of a decode weight (in, out) or of its panels (out / 16, in, 16); -1 for anything else."""
    return w.shape[0] * 16 if w.dim() == 3 and w.shape[2] == 16 else (w.shape[1] if w.dim() == 2 else -1)


def check_block(x, wqkv, wo, w13, w2, k_cache, v_cache, rope, pos, eps) -> int:
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
    hidden = weight_in(w2)
    for name, w, size in (("wqkv", wqkv, (dim, 3 * dim)), ("wo", wo, (dim, dim)), ("w13", w13, (dim, 2 * hidden)),
                          ("w2", w2, (hidden, dim))):  # fmt: skip
        if (weight_in(w), weight_out(w)) != size or w.dtype != x.dtype:
            raise bad(
                f"{name} must be (in, out) = {size} or its panels (out / 16, in, 16) in {x.dtype}, got "
                f"{tuple(w.shape)} {w.dtype}"
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
    wqkv: torch.Tensor,
    wo: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    rope: torch.Tensor,
    pos: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """x (R, dim) at cache position `pos` -> (R, dim); writes k, v at `pos` of the (R, H, S, D) caches.
    Weights (in, out) or their panels: wqkv (dim, 3 dim), wo (dim, dim), w13 (dim, 2 hidden) = [w1 | w3],
    w2 (hidden, dim)."""
    n = check_block(x, wqkv, wo, w13, w2, k_cache, v_cache, rope, pos, eps)
    r, dim = x.shape
    heads, head_dim = k_cache.shape[1], k_cache.shape[3]
    wqkv, wo, w13, w2 = dense(wqkv), dense(wo), dense(w13), dense(w2)
    qkv = (rms(x, eps) @ wqkv).view(r, 3, heads, head_dim)
    qk = rotate(qkv[:, :2], rope[n])  # (R, 2, H, D)
    k_cache[:, :, n] = qk[:, 1]
    v_cache[:, :, n] = qkv[:, 2]
    att = F.scaled_dot_product_attention(qk[:, 0, :, None], k_cache[:, :, : n + 1], v_cache[:, :, : n + 1])
    h = torch.addmm(x, att.reshape(r, dim), wo)  # att: (R, H, 1, D)
    a, b = (rms(h, eps) @ w13).chunk(2, dim=-1)
    return torch.addmm(h, F.silu(a) * b, w2)


def decode_logits(z: torch.Tensor, head: torch.Tensor, eps: float, cfg_scale: float | None) -> torch.Tensor:
    """z (R, dim) -> logits: RMSNorm, then over [cond; uncond] rows (cfg_scale given) torch.lerp(uncond, cond, s)
    = uncond + s (cond - uncond), (R / 2, dim), then @ head (dim, V) or its panels."""
    if z.dim() != 2 or not z.is_floating_point():
        raise ValueError(f"decode_logits: z must be a floating (rows, dim) tensor, got {z.dtype} {tuple(z.shape)}")
    if weight_in(head) != z.shape[1] or weight_out(head) < 1 or head.dtype != z.dtype:
        raise ValueError(
            f"decode_logits: head must be (dim, vocab) with dim = {z.shape[1]}, or its panels (vocab / 16, dim, 16), "
            f"in {z.dtype}, got {tuple(head.shape)} {head.dtype}"
        )
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"decode_logits: eps must be a finite number >= 0, got {eps}")
    if cfg_scale is not None and (not math.isfinite(cfg_scale) or z.shape[0] % 2):
        raise ValueError(
            f"decode_logits: with cfg_scale, z must hold [cond; uncond] rows (an even count) and the scale must be "
            f"finite, got {z.shape[0]} rows, cfg_scale {cfg_scale}"
        )
    zn = rms(z, eps)
    if cfg_scale is not None:
        cond, uncond = zn.chunk(2)
        zn = torch.lerp(uncond, cond, cfg_scale)
    return zn @ dense(head)
