"""Open-MAGVIT2 encoder: image (B, 3, H, W) -> latents (B, z_channels, H / f, W / f), f = 2^(len(ch_mult) - 1).

Module names equal the official `improved_model.Encoder`, so `state_dict()` keys are the checkpoint's `encoder.*`
keys: conv_in, down.{i}.block.{j}, down.{i}.downsample, mid_block.{j}, norm_out, conv_out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from magvit2.nn.image.blocks import ResBlock, group_norm


class EncoderLevel(nn.Module):
    """`num_res_blocks` ResBlocks, then a stride-2 3x3 conv (with bias) unless this is the last level."""

    def __init__(self, *, in_channels: int, out_channels: int, num_res_blocks: int, downsample: bool) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.block = nn.ModuleList(
            ResBlock(in_channels=widths[j], out_channels=widths[j + 1]) for j in range(num_res_blocks)
        )
        self.downsample = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class Encoder(nn.Module):
    """conv_in (3x3, no bias) -> levels (ResBlocks + stride-2 conv) -> mid ResBlocks -> GN -> swish -> conv_out 1x1.

    Example:
        >>> enc = Encoder(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=18)
        >>> enc(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 18, 8, 8])
    """

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        widths = [ch] + [ch * m for m in ch_mult]  # input width of level i is widths[i], output widths[i + 1]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList(
            EncoderLevel(
                in_channels=widths[i],
                out_channels=widths[i + 1],
                num_res_blocks=num_res_blocks,
                downsample=i < len(ch_mult) - 1,
            )
            for i in range(len(ch_mult))
        )
        top = widths[-1]
        self.mid_block = nn.ModuleList(ResBlock(in_channels=top, out_channels=top) for _ in range(num_res_blocks))
        self.norm_out = group_norm(top)
        self.conv_out = nn.Conv2d(top, z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, z_channels, H / f, W / f)."""
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))
