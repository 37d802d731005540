"""Typed wrappers of the AR decode ops: `decode_block` (one pre-norm block for the newest position of R rows, the
body of a generation step), `decode_logits` (the step's head), `decode_panels` (the weight layout they stream) and
`decode_weight` (nn.Linear weights into that layout in one write).
CPU kernels only, as magvit2/ops/_library.py declares.

A decode step feeds one position per row through each block: a few hundred kFLOP per row between ~40 small tensor
ops, so on a CPU the op overheads, the attention call (`scaled_dot_product_attention` for one query costs ~0.5 ms
here) and small-M matmuls dominate. The CPU kernel runs the whole block in one call with its own matmul tiles and
attention loops (csrc/cpu/decode.cpp); other devices run the reference (magvit2/ops/reference/ar_decode.py), whose ops
are large enough there or can be captured whole. Not differentiable: for inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from magvit2.ops import backends


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
    """x (R, dim), the rows' input at cache position `pos` -> the block's output (R, dim).

    Weights in (in, out) layout, in x's dtype, the RMSNorm weights folded in: wqkv (dim, 3 dim) =
    (attention.wqkv.weight * attention_norm.weight).t(); wo (dim, dim); w13 (dim, 2 hidden) = [w1 | w3] * ffn_norm;
    w2 (hidden, dim). k_cache, v_cache: contiguous (R, H, S, D) in x's dtype, H * D = dim; k (RoPE-rotated) and v
    are written at `pos`, and attention runs over positions [0, pos]. rope: float32 (L, D / 2, 2) (cos, sin) table,
    row `pos` rotates q and k. pos: one integer (a tensor, so that a caller's graph does not specialise on it).

    Example:
        >>> r, h, d, hid = 2, 2, 4, 16
        >>> dim = h * d
        >>> w = [torch.randn(dim, 3 * dim), torch.randn(dim, dim), torch.randn(dim, 2 * hid), torch.randn(hid, dim)]
        >>> k, v = torch.zeros(r, h, 5, d), torch.zeros(r, h, 5, d)
        >>> decode_block(torch.randn(r, dim), *w, k, v, torch.rand(5, d // 2, 2), torch.tensor(0), 1e-5).shape
        torch.Size([2, 8])
    """
    return torch.ops.magvit2.decode_block(x, wqkv, wo, w13, w2, k_cache, v_cache, rope, pos, float(eps))


def decode_logits(z: torch.Tensor, head: torch.Tensor, eps: float, cfg_scale: float | None = None) -> torch.Tensor:
    """The step's logits: z (R, dim) -> RMSNorm (its weight folded into head) -> with `cfg_scale`, the R = 2B rows
    [cond; uncond] combined as torch.lerp(uncond, cond, cfg_scale) (B, dim) -> @ head (dim, V) or its panels.
    Guidance before the head is exact up to rounding (the head is linear) and halves the rows of its matmul.

    Example:
        >>> decode_logits(torch.randn(4, 8), torch.randn(8, 32), 1e-5, cfg_scale=2.0).shape
        torch.Size([2, 32])
    """
    return torch.ops.magvit2.decode_logits(z, head, float(eps), None if cfg_scale is None else float(cfg_scale))


def decode_panels(w: torch.Tensor) -> torch.Tensor:
    """A (in, out) weight as its 16-column panels (out / 16, in, 16), each contiguous: the layout the CPU decode
    kernels read best (a 16-column slice of a row-major (in, out) matrix puts every row on another page, which the
    hardware prefetcher does not follow: 5.0-5.4 vs 5.8-6.3 ms for a step's 24 block matmuls here). `w` itself when
    out is not a multiple of 16. Both layouts are accepted by `decode_block` and `decode_logits`.

    Example:
        >>> decode_panels(torch.randn(8, 32)).shape
        torch.Size([2, 8, 16])
    """
    if w.dim() != 2 or w.shape[1] % 16:
        return w
    return w.unflatten(1, (-1, 16)).transpose(0, 1).contiguous()


def decode_weight(linears: Sequence[torch.Tensor], scale: torch.Tensor | None = None, *, panels: bool) -> torch.Tensor:
    """nn.Linear weights (out_i, in) stacked along out, their columns scaled by `scale` (in,) (an RMSNorm weight
    folded in), as one decode weight: (in, sum out_i), or its 16-column panels when `panels` (as `decode_panels`).

    Each part is written straight into the one new tensor: no transient copy (a fold, a transpose and a panel copy
    took three copies of each weight, which at the AR-B preset left about 300 MiB of freed heap behind the 1.3 GiB
    of weights; the result is the same bit for bit). Not differentiable.

    Example:
        >>> w1, w3, g = torch.randn(32, 8), torch.randn(32, 8), torch.rand(8)
        >>> torch.equal(decode_weight([w1, w3], g, panels=True), decode_panels((torch.cat([w1, w3]) * g).t()))
        True
    """
    k, outs = linears[0].shape[1], [w.shape[0] for w in linears]
    first = linears[0]
    s = None if scale is None else scale.detach().view(k, 1)  # (in, 1)

    def write(dst: torch.Tensor, src: torch.Tensor, s: torch.Tensor | None) -> None:
        torch.mul(src, s, out=dst) if s is not None else dst.copy_(src)

    if panels and all(o % 16 == 0 for o in outs):
        out = first.new_empty((sum(outs) // 16, k, 16))
        j = 0
        for w in linears:
            n = w.shape[0] // 16
            write(out[j : j + n], w.detach().unflatten(0, (n, 16)).transpose(1, 2), s)  # (n, in, 16)
            j += n
        return out
    out = first.new_empty((k, sum(outs)))
    j = 0
    for w in linears:
        write(out[:, j : j + w.shape[0]], w.detach().t(), s)
        j += w.shape[0]
    return decode_panels(out) if panels else out


def prefers_panels(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the decode kernel that serves `device` and `dtype` streams 16-column panels: the CPU extension's float32
    AVX2 + FMA tiles on an x86-64 CPU that has them. Elsewhere (other dtypes, other devices, CPUs without AVX2, the
    reference) the kernels take (in, out) weights, and panels would only be laid out back on every call."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and backends.serving("decode_block", "cpu") == "cpu_ext"
        and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    )
