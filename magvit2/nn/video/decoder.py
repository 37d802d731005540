"""Open-MAGVIT2 video decoder: quantized latents (B, z_channels, t, h, w) -> clips (B, 3, T, f*h, f*w), not clamped.

Module names equal the official `improved_video_model.Decoder` (`decoder.*` checkpoint keys): conv_in.conv_1,
mid_block.{j}, up.{i}.block.{j}, up.{i}.upsample.conv1.conv_1, adaptive.{i}.{gamma,beta}, norm_out, conv_out.conv_1.
Level i > 0 upsamples by the factor of encoder level i - 1 (magvit2.nn.video.encoder.level_stride), so t latent
frames give the encoder's frame count back (5 -> 9 -> 17 for ch_mult (1, 2, 2, 4)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from magvit2.nn.image.blocks import AdaptiveGroupNorm, ResBlock, group_norm, style_stats
from magvit2.nn.video.blocks import CausalConv3d, Upsampler3D, causal_conv3d
from magvit2.nn.video.encoder import level_stride


class VideoDecoderLevel(nn.Module):
    """`num_res_blocks` causal ResBlocks, then a 3D upsampler by `block` unless this is level 0."""

    def __init__(
        self, *, in_channels: int, out_channels: int, num_res_blocks: int, block: tuple[int, int, int] | None
    ) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.block = nn.ModuleList(
            ResBlock(in_channels=widths[j], out_channels=widths[j + 1], conv=causal_conv3d)
            for j in range(num_res_blocks)
        )
        self.upsample = None if block is None else Upsampler3D(channels=out_channels, block=block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class VideoDecoder(nn.Module):
    """conv_in (with bias) -> mid ResBlocks -> per level (coarse to fine): AdaGN(style) -> ResBlocks -> upsample ->
    GN -> swish -> conv_out (3x3x3, with bias). `style` is the decoder input; its statistics over (t, h, w) are
    computed once per call (unbiased variance, as the official).

    Example:
        >>> dec = VideoDecoder(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=18)
        >>> dec(torch.randn(1, 18, 3, 4, 4).sign()).shape
        torch.Size([1, 3, 5, 16, 16])
    """

    def __init__(
        self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, out_ch: int = 3
    ) -> None:
        super().__init__()
        n = len(ch_mult)
        top = ch * ch_mult[-1]
        in_widths = [ch * ch_mult[i + 1] if i + 1 < n else top for i in range(n)]
        self.conv_in = CausalConv3d(z_channels, top, 3)
        self.mid_block = nn.ModuleList(
            ResBlock(in_channels=top, out_channels=top, conv=causal_conv3d) for _ in range(num_res_blocks)
        )
        self.adaptive = nn.ModuleList(AdaptiveGroupNorm(z_channels=z_channels, channels=in_widths[i]) for i in range(n))
        self.up = nn.ModuleList(
            VideoDecoderLevel(
                in_channels=in_widths[i],
                out_channels=ch * ch_mult[i],
                num_res_blocks=num_res_blocks,
                block=level_stride(ch_mult[i - 1]) if i > 0 else None,
            )
            for i in range(n)
        )
        self.norm_out = group_norm(ch * ch_mult[0])
        self.conv_out = CausalConv3d(ch * ch_mult[0], out_ch, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_channels, t, h, w), t * h * w >= 2 -> (B, out_ch, T, f*h, f*w)."""
        stats = style_stats(z)
        x = self.conv_in(z)
        for block in self.mid_block:
            x = block(x)
        for i in reversed(range(len(self.up))):
            x = self.up[i](self.adaptive[i].modulate(x, stats))
        return self.conv_out(F.silu(self.norm_out(x)))
