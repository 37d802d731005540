"""Building blocks of the Open-MAGVIT2 video tokenizer (official `improved_video_model.py`, reference/open-magvit2.md
§8), on the image model's ResBlock and adaptive group norm:
- `CausalConv3d`: time padded by k_t - 1 frames on the left only (zeros), height and width by half the kernel on both
  sides, then a Conv3d without padding. Output frame t sees input frames <= t only. Key: conv_1 (the official name).
- `Upsampler3D`: causal 3x3x3 conv (C -> C * bt * bh * bw, with bias), then 3D depth-to-space in DCR order
  (input channel ((it * bh + ih) * bw + iw) * C + k feeds output channel k at offset (it, ih, iw)); after a temporal
  upsample (bt = 2) the second frame (the duplicate of the first) is dropped: T -> 2T - 1, as the causal encoder
  maps 2T - 1 frames to T.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv3d(nn.Module):
    """(B, C_in, T, H, W) -> (B, C_out, T', H', W'), T' = (T - 1) // stride_t + 1 for a kernel of k_t frames (causal
    padding k_t - 1), H' = H // stride_h for odd spatial kernels.

    Example:
        >>> CausalConv3d(3, 8, 3, stride=(2, 2, 2))(torch.randn(1, 3, 17, 16, 16)).shape
        torch.Size([1, 8, 9, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int | Sequence[int] = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.padding = (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0)  # F.pad order: w, h, then t (left only)
        self.conv_1 = nn.Conv3d(in_channels, out_channels, (kt, kh, kw), stride=stride, bias=bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.conv_1.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_1(F.pad(x, self.padding))


def causal_conv3d(in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> CausalConv3d:
    """The ResBlock convolution factory of the video model (magvit2.nn.image.blocks.ConvFactory)."""
    return CausalConv3d(in_channels, out_channels, kernel_size, bias=bias)


def depth_to_space3d(x: torch.Tensor, block: Sequence[int]) -> torch.Tensor:
    """DCR depth-to-space over (t, h, w): (B, bt*bh*bw*C, T, H, W) -> (B, C, bt*T, bh*H, bw*W) with
    out[b, k, bt*t + it, bh*h + ih, bw*w + iw] = x[b, ((it * bh + ih) * bw + iw) * C + k, t, h, w].

    Example:
        >>> depth_to_space3d(torch.arange(8.0).view(1, 8, 1, 1, 1), (2, 2, 2))[0, 0].tolist()
        [[[0.0, 1.0], [2.0, 3.0]], [[4.0, 5.0], [6.0, 7.0]]]
    """
    b, c, t, h, w = x.shape
    bt, bh, bw = block
    if c % (bt * bh * bw):
        raise ValueError(f"depth_to_space3d: channels {c} not divisible by the block volume {bt * bh * bw}")
    c_out = c // (bt * bh * bw)
    out = x.reshape(b, bt, bh, bw, c_out, t, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)  # (B, C, t, bt, h, bh, w, bw)
    return out.reshape(b, c_out, t * bt, h * bh, w * bw)


class Upsampler3D(nn.Module):
    """Causal conv (C -> C * prod(block)) + DCR depth-to-space; with a temporal factor of 2, frame 1 (the first
    frame's duplicate) is dropped, so T frames give 2T - 1 (a 1-frame input gives 1). Key: conv1.conv_1."""

    def __init__(self, *, channels: int, block: Sequence[int]) -> None:
        super().__init__()
        self.block = tuple(block)
        self.conv1 = CausalConv3d(channels, channels * self.block[0] * self.block[1] * self.block[2], 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = depth_to_space3d(self.conv1(x), self.block)
        if self.block[0] > 1:
            out = torch.cat([out[:, :, :1], out[:, :, 2:]], dim=2) if out.shape[2] > 2 else out[:, :, :1]
        return out
