"""Building blocks of the Open-MAGVIT2 encoder and decoder, with the official numerics.

Conventions pinned by tests/nn/image/test_blocks.py (official `improved_model.py`, reference/open-magvit2.md §2.1):
- ResBlock convs carry no bias; GroupNorm(32 groups, eps 1e-6); no dropout; 1x1 bias-free `nin_shortcut` when the
  width changes.
- The upsampler is conv3x3(C -> 4C) + depth-to-space in DCR order (input channel (r1 * 2 + r2) * C + k feeds output
  channel k at offset (r1, r2)). `nn.PixelShuffle` is CRD (input channel k * 4 + r1 * 2 + r2): loading official
  weights into a PixelShuffle upsampler gives a scrambled image.
- AdaptiveGroupNorm scales by gamma(sqrt(var + eps)) with the unbiased variance over the token grid and shifts by
  beta(mean); the scale is used as is (not 1 + scale).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

NUM_GROUPS = 32
NORM_EPS = 1e-6


def group_norm(channels: int, *, affine: bool = True) -> nn.GroupNorm:
    if channels % NUM_GROUPS:
        raise ValueError(f"GroupNorm({NUM_GROUPS} groups) needs a channel count divisible by 32, got {channels}")
    return nn.GroupNorm(NUM_GROUPS, channels, eps=NORM_EPS, affine=affine)


# A convolution factory: (in_channels, out_channels, kernel_size, bias) -> a module keeping the spatial size.
ConvFactory = Callable[[int, int, int, bool], nn.Module]


def conv2d(in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> nn.Conv2d:
    """A same-size 2D convolution (half padding), as the image model's ResBlocks use."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class ResBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> conv2, plus the (1x1-projected) input. Shapes (B, C_in, H, W) ->
    (B, C_out, H, W) (the video model passes causal 3D convolutions as `conv`: (B, C, T, H, W)). Keys: norm1, conv1,
    norm2, conv2, and nin_shortcut when C_in != C_out."""

    def __init__(self, *, in_channels: int, out_channels: int, conv: ConvFactory = conv2d) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = conv(in_channels, out_channels, 3, False)
        self.norm2 = group_norm(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, False)
        self.nin_shortcut = conv(in_channels, out_channels, 1, False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # silu(x) = x * sigmoid(x), the official swish, in one kernel
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(x))


def depth_to_space(x: torch.Tensor, block_size: int = 2) -> torch.Tensor:
    """DCR depth-to-space: (B, s*s*C, H, W) -> (B, C, s*H, s*W) with out[b, k, s*h + r1, s*w + r2] =
    x[b, (r1 * s + r2) * C + k, h, w] (the TensorFlow/ONNX default; NOT nn.PixelShuffle, which is CRD).

    Keeps the memory format: a channels_last input is rearranged as NHWC, where DCR is a pure reshape of the channel
    axis, and comes back channels_last.

    Example:
        >>> depth_to_space(torch.arange(4.0).view(1, 4, 1, 1))[0, 0].tolist()
        [[0.0, 1.0], [2.0, 3.0]]
    """
    b, c, h, w = x.shape
    s = block_size
    if c % (s * s):
        raise ValueError(f"depth_to_space: channels {c} not divisible by block_size^2 = {s * s}")
    c_out = c // (s * s)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        nhwc = x.permute(0, 2, 3, 1).reshape(b, h, w, s, s, c_out)  # free view: channel = (r1, r2, k)
        nhwc = nhwc.permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, c_out)  # (B, h, r1, w, r2, C)
        return nhwc.permute(0, 3, 1, 2)  # logical NCHW, physically channels_last
    out = x.reshape(b, s, s, c_out, h, w).permute(0, 3, 4, 1, 5, 2)  # (B, C, h, r1, w, r2)
    return out.reshape(b, c_out, h * s, w * s)


class Upsampler(nn.Module):
    """conv3x3 (C -> 4C, with bias) then DCR depth-to-space: (B, C, H, W) -> (B, C, 2H, 2W). Key: conv1."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x), 2)


class StyleStats(NamedTuple):
    """Per-channel statistics of the decoder's quantized input over its token grid, each (B, z_channels)."""

    std: torch.Tensor  # sqrt(unbiased var + eps)
    mean: torch.Tensor


def style_stats(style: torch.Tensor, eps: float = NORM_EPS) -> StyleStats:
    """(B, Z, h, w) (or (B, Z, t, h, w)) -> StyleStats. The variance is unbiased (divides by the token count - 1) as
    in the official code, so a single token gives NaN; the decoders reject such grids before calling this."""
    flat = style.flatten(2)  # (B, Z, h*w)
    return StyleStats(std=(flat.var(dim=-1) + eps).sqrt(), mean=flat.mean(dim=-1))


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine, modulated by the decoder's quantized input ("style"):
    out = gamma(std(style)) * GN(x) + beta(mean(style)). Keys: gamma.{weight,bias}, beta.{weight,bias} (C, Z)."""

    def __init__(self, *, z_channels: int, channels: int) -> None:
        super().__init__()
        self.gn = group_norm(channels, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)

    def modulate(self, x: torch.Tensor, stats: StyleStats) -> torch.Tensor:
        """x (B, C, H, W) (or (B, C, T, H, W)) with precomputed style statistics (the decoder computes them once for
        all levels)."""
        ones = (1,) * (x.dim() - 2)
        scale = self.gamma(stats.std).view(*stats.std.shape[:1], -1, *ones)  # (B, C, 1, 1)
        bias = self.beta(stats.mean).view(*stats.mean.shape[:1], -1, *ones)
        return torch.addcmul(bias, scale, self.gn(x))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), style (B, Z, h, w) -> (B, C, H, W)."""
        return self.modulate(x, style_stats(style))
