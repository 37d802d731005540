"""Open-MAGVIT2 decoder: quantized latents (B, z_channels, h, w) -> image (B, 3, f*h, f*w), not clamped.

Module names equal the official `improved_model.Decoder` (`decoder.*` checkpoint keys): conv_in, mid_block.{j},
up.{i}.block.{j}, up.{i}.upsample.conv1, adaptive.{i}.{gamma,beta}, norm_out, conv_out. `up[i]` and `adaptive[i]`
belong to resolution level i (0 = full resolution) and run from the coarsest level down.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from magvit2.nn.image.blocks import AdaptiveGroupNorm, ResBlock, StyleStats, Upsampler, group_norm, style_stats


class DecoderLevel(nn.Module):
    """`num_res_blocks` ResBlocks, then a DCR upsampler unless this is level 0."""

    def __init__(self, *, in_channels: int, out_channels: int, num_res_blocks: int, upsample: bool) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.block = nn.ModuleList(
            ResBlock(in_channels=widths[j], out_channels=widths[j + 1]) for j in range(num_res_blocks)
        )
        self.upsample = Upsampler(channels=out_channels) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Decoder(nn.Module):
    """conv_in -> mid ResBlocks -> per level (coarse to fine): AdaGN(style) -> ResBlocks -> upsample -> GN -> swish
    -> conv_out. `style` is the decoder input itself; its statistics are computed once per call.

    Example:
        >>> dec = Decoder(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=18)
        >>> dec(torch.randn(1, 18, 8, 8).sign()).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        out_ch: int = 3,
    ) -> None:
        super().__init__()
        n = len(ch_mult)
        top = ch * ch_mult[-1]
        # Input width of level i: the output width of level i + 1 (the top width for the coarsest level).
        in_widths = [ch * ch_mult[i + 1] if i + 1 < n else top for i in range(n)]
        self.conv_in = nn.Conv2d(z_channels, top, 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(in_channels=top, out_channels=top) for _ in range(num_res_blocks))
        self.adaptive = nn.ModuleList(AdaptiveGroupNorm(z_channels=z_channels, channels=in_widths[i]) for i in range(n))
        self.up = nn.ModuleList(
            DecoderLevel(
                in_channels=in_widths[i],
                out_channels=ch * ch_mult[i],
                num_res_blocks=num_res_blocks,
                upsample=i > 0,
            )
            for i in range(n)
        )
        self.norm_out = group_norm(ch * ch_mult[0])
        self.conv_out = nn.Conv2d(ch * ch_mult[0], out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_channels, h, w), h * w >= 2 -> (B, out_ch, f*h, f*w)."""
        stats: StyleStats = style_stats(z)
        x = self.conv_in(z)
        for block in self.mid_block:
            x = block(x)
        for i in reversed(range(len(self.up))):
            x = self.up[i](self.adaptive[i].modulate(x, stats))
        return self.conv_out(F.silu(self.norm_out(x)))
