"""Typed wrappers of the AR decode ops: `decode_block` (one pre-norm block for the newest position of R rows, the
body of a generation step) and `decode_logits` (the step's head), both on the weights as the model holds them
(RMSNorm weights, nn.Linear's (out, in)), so a generation reads the model and copies none of it.
CPU kernels only, as magvit2/ops/_library.py declares.

A decode step feeds one position per row through each block: a few hundred kFLOP per row between ~40 small tensor
ops, so on a CPU the op overheads, the attention call (`scaled_dot_product_attention` for one query costs ~0.5 ms
here) and small-M matmuls dominate. The CPU kernel runs the whole block in one call with its own matmul tiles and
attention loops (csrc/cpu/decode.cpp); other devices run the reference (magvit2/ops/reference/ar_decode.py), whose ops
are large enough there or can be captured whole. Not differentiable: for inference.
"""

from __future__ import annotations

import torch


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
    """x (R, dim), the rows' input at cache position `pos` -> the block's output (R, dim).

    Weights in x's dtype as a transformer block holds them: attention_norm and ffn_norm (dim,) (RMSNorm weights),
    wqkv (3 dim, dim), wo (dim, dim), w1 and w3 (hidden, dim), w2 (dim, hidden) (nn.Linear weights, (out, in)).
    k_cache, v_cache: contiguous (R, H, S, D) in x's dtype, H * D = dim; k (RoPE-rotated) and v are written at
    `pos`, and attention runs over positions [0, pos]. rope: float32 (L, D / 2, 2) (cos, sin) table, row `pos`
    rotates q and k. pos: one integer (a tensor, so that a caller's graph does not specialise on it).

    Example:
        >>> r, h, d, hid = 2, 2, 4, 16
        >>> dim = h * d
        >>> g, w = torch.ones(dim), [torch.randn(3 * dim, dim), torch.randn(dim, dim)]
        >>> ff = [torch.randn(hid, dim), torch.randn(hid, dim), torch.randn(dim, hid)]
        >>> k, v, rope = torch.zeros(r, h, 5, d), torch.zeros(r, h, 5, d), torch.rand(5, d // 2, 2)
        >>> decode_block(torch.randn(r, dim), g, *w, g, *ff, k, v, rope, torch.tensor(0), 1e-5).shape
        torch.Size([2, 8])
    """
    return torch.ops.magvit2.decode_block(
        x, attention_norm, wqkv, wo, ffn_norm, w1, w3, w2, k_cache, v_cache, rope, pos, float(eps)
    )


def decode_logits(
    z: torch.Tensor, norm: torch.Tensor, head: torch.Tensor, eps: float, cfg_scale: float | None = None
) -> torch.Tensor:
    """The step's logits: z (R, dim) -> RMSNorm (weight `norm` (dim,)) -> with `cfg_scale`, the R = 2B rows
    [cond; uncond] combined as torch.lerp(uncond, cond, cfg_scale) (B, dim) -> the head (V, dim), as nn.Linear.
    Guidance before the head is exact up to rounding (the head is linear) and halves the rows of its matmul.

    Example:
        >>> decode_logits(torch.randn(4, 8), torch.ones(8), torch.randn(32, 8), 1e-5, cfg_scale=2.0).shape
        torch.Size([2, 32])
    """
    return torch.ops.magvit2.decode_logits(z, norm, head, float(eps), None if cfg_scale is None else float(cfg_scale))
