"""Open-MAGVIT2 video encoder: clips (B, 3, T, H, W) -> latents (B, z_channels, T', H / f, W / f), causal in time.

Module names equal the official `improved_video_model.Encoder` (checkpoint keys `encoder.*`): conv_in.conv_1,
down.{i}.block.{j}, down.{i}.downsample.conv_1, mid_block.{j}, norm_out, conv_out.conv_1. Level i downsamples by
(1, 2, 2) where ch_mult[i] == 1 and by (2, 2, 2) otherwise (not after the last level): ch_mult (1, 2, 2, 4) maps
17 x 128 x 128 to 5 x 16 x 16 (17 -> 17 -> 9 -> 5 frames).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from magvit2.nn.image.blocks import ResBlock, group_norm
from magvit2.nn.video.blocks import CausalConv3d, causal_conv3d


def level_stride(multiplier: int) -> tuple[int, int, int]:
    """The (t, h, w) factor of a level with this width multiplier: spatial only for a multiplier of 1."""
    return (1, 2, 2) if multiplier == 1 else (2, 2, 2)


class VideoEncoderLevel(nn.Module):
    """`num_res_blocks` causal ResBlocks, then a strided causal 3x3x3 conv (with bias) unless this is the last level."""

    def __init__(
        self, *, in_channels: int, out_channels: int, num_res_blocks: int, stride: tuple[int, int, int] | None
    ) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.block = nn.ModuleList(
            ResBlock(in_channels=widths[j], out_channels=widths[j + 1], conv=causal_conv3d)
            for j in range(num_res_blocks)
        )
        self.downsample = None if stride is None else CausalConv3d(out_channels, out_channels, 3, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class VideoEncoder(nn.Module):
    """conv_in (3x3x3, no bias) -> levels -> mid ResBlocks -> GN -> swish -> conv_out 1x1x1 (with bias).

    Example:
        >>> enc = VideoEncoder(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=18)
        >>> enc(torch.randn(1, 3, 5, 16, 16)).shape
        torch.Size([1, 18, 3, 4, 4])
    """

    def __init__(
        self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        widths = [ch] + [ch * m for m in ch_mult]
        self.conv_in = CausalConv3d(in_channels, ch, 3, bias=False)
        self.down = nn.ModuleList(
            VideoEncoderLevel(
                in_channels=widths[i],
                out_channels=widths[i + 1],
                num_res_blocks=num_res_blocks,
                stride=level_stride(ch_mult[i]) if i < len(ch_mult) - 1 else None,
            )
            for i in range(len(ch_mult))
        )
        top = widths[-1]
        self.mid_block = nn.ModuleList(
            ResBlock(in_channels=top, out_channels=top, conv=causal_conv3d) for _ in range(num_res_blocks)
        )
        self.norm_out = group_norm(top)
        self.conv_out = CausalConv3d(top, z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, T, H, W) -> (B, z_channels, T', H / f, W / f)."""
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))
