"""Per-image PSNR and SSIM as the official evaluation computes them, batched in torch.

The official script (reference/open-magvit2.md §3.6) quantises originals and reconstructions (clamped to [-1, 1]) to
uint8 by truncation, rescales them to [0, 1] and calls `skimage.metrics.peak_signal_noise_ratio(data_range=1.0)` and
`structural_similarity(data_range=1.0, channel_axis=-1)` image by image. `psnr` and `ssim` here give the same values
(to ~1e-12 in float64) for a whole batch at once, without numpy/scikit-image and on any device.

Example:
    >>> a = quantize_uint8(torch.rand(2, 3, 32, 32) * 2 - 1)
    >>> psnr(a, a.flip(-1)).shape, ssim(a, a).tolist()
    (torch.Size([2]), [1.0, 1.0])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from magvit2.data.images import uint8_levels

# skimage.metrics.structural_similarity defaults (gaussian_weights=False)
SSIM_WIN_SIZE = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def quantize_uint8(x: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> the same images on 256 uint8 levels, rescaled to [0, 1], in `dtype`.

    Values outside [-1, 1] are clamped first (reconstructions are not bounded); the levels are those of
    `magvit2.data.images.uint8_levels`: 255 * ((x + 1) / 2) truncated, as the official evaluation's
    `(x * 255.0).to(torch.uint8)` (rounding would put PSNR 0.66 dB higher at 45 dB).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"quantize_uint8: expected a float tensor in [-1, 1], got {getattr(x, 'dtype', type(x))}")
    return uint8_levels(x).to(dtype) / 255


def _check_pair(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    for arg, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: `{arg}` must be float images (B, C, H, W) in [0, 1], got {shape}")
    if a.shape != b.shape:
        raise ValueError(f"{name}: images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB: (B, C, H, W), (B, C, H, W) in [0, data_range] -> (B,) float64 (inf where identical).

    Same as `skimage.metrics.peak_signal_noise_ratio(a[i], b[i], data_range=data_range)` for each image i.
    """
    _check_pair("psnr", a, b)
    mse = (a.double() - b.double()).square().flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(data_range**2 / mse)  # mse == 0 -> inf, as skimage (which also warns)


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM: (B, C, H, W), (B, C, H, W) in [0, data_range] -> (B,) float64, mean over channels.

    Same as `skimage.metrics.structural_similarity(a_i, b_i, data_range=data_range, channel_axis=-1)` on the
    (H, W, C) image i with its defaults: 7x7 uniform window, sample covariance (x 49/48), K1 = 0.01, K2 = 0.03, mean
    of the SSIM map over the region 3 pixels away from every border. That region is exactly where a 7x7 window fits
    inside the image, so an unpadded avg_pool2d gives it directly (skimage's reflect padding never reaches it).
    H and W must be at least 7.
    """
    _check_pair("ssim", a, b)
    win = SSIM_WIN_SIZE
    if min(a.shape[-2:]) < win:
        raise ValueError(f"ssim: images of {a.shape[-2]}x{a.shape[-1]} are smaller than the {win}x{win} window")
    bsz, c, h, w = a.shape
    x = a.double().reshape(bsz * c, 1, h, w)  # channels as separate images: skimage loops over channels
    y = b.double().reshape(bsz * c, 1, h, w)
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # one pooling call for all five local means
    ux, uy, uxx, uyy, uxy = F.avg_pool2d(stacked, win, stride=1).unbind(1)  # each (B*C, H-6, W-6)

    n = win * win
    cov_norm = n / (n - 1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).view(bsz, c).mean(1)
