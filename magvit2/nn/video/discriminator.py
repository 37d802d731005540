"""3D PatchGAN discriminator of the official video tokenizer recipe (`NLayerDiscriminator3D`, keys
`loss.discriminator.main.*`). For n_layers=3, ndf=64, all kernels 3 x 3 x 3 with padding 1:
  main.0  Conv3d(3->64, stride 2, bias) + LeakyReLU(0.2)                      (main.1)
  main.2  Conv3d(64->128, stride (2, 2, 2)) + main.3 BatchNorm3d + LeakyReLU   (main.4)
  main.5  Conv3d(128->256, stride (1, 2, 2)) + main.6 BatchNorm3d + LeakyReLU  (main.7)
  main.8  Conv3d(256->512, stride 1) + main.9 BatchNorm3d + LeakyReLU          (main.10)
  main.11 Conv3d(512->1, stride 1, bias)
4,665,729 parameters; a clip (B, 3, 17, 128, 128) gives a (B, 1, 5, 16, 16) map of patch logits.
"""

from __future__ import annotations

import torch
from torch import nn

from magvit2.nn.image.discriminator import check_discriminator_args, official_init


class PatchDiscriminator3D(nn.Module):
    """3D PatchGAN with BatchNorm. Input (B, input_nc, T, H, W) in [-1, 1] -> logits (B, 1, t, h, w).

    Example:
        >>> PatchDiscriminator3D()(torch.zeros(1, 3, 17, 128, 128)).shape
        torch.Size([1, 1, 5, 16, 16])
    """

    def __init__(self, *, input_nc: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        check_discriminator_args("PatchDiscriminator3D", input_nc=input_nc, ndf=ndf, n_layers=n_layers)
        layers: list[nn.Module] = [nn.Conv3d(input_nc, ndf, 3, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):  # time strided by the first of these only; the last keeps stride 1
            prev, mult = mult, min(2**n, 8)
            stride = (2 if n == 1 else 1, 2, 2) if n < n_layers else 1
            layers += [
                nn.Conv3d(ndf * prev, ndf * mult, 3, stride, 1, bias=False),  # bias-free: BatchNorm follows
                nn.BatchNorm3d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv3d(ndf * mult, 1, 3, 1, 1))
        self.main = nn.Sequential(*layers)
        official_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != self.main[0].in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"PatchDiscriminator3D: x must be (B, {self.main[0].in_channels}, T, H, W), got {shape}")
        return self.main(x)
