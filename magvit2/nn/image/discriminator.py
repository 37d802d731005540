"""PatchGAN discriminator of the official tokenizer recipe (pix2pix `NLayerDiscriminator`, reference §3.3).

Layout and key names follow the official checkpoint (`loss.discriminator.main.*`): for n_layers=3, ndf=64
  main.0  Conv(3->64, k4 s2 p1, bias) + LeakyReLU(0.2)            (main.1)
  main.2  Conv(64->128, k4 s2 p1) + main.3 BatchNorm + LeakyReLU   (main.4)
  main.5  Conv(128->256, k4 s2 p1) + main.6 BatchNorm + LeakyReLU  (main.7)
  main.8  Conv(256->512, k4 s1 p1) + main.9 BatchNorm + LeakyReLU  (main.10)
  main.11 Conv(512->1, k4 s1 p1, bias)
2.77M parameters; the output is a (B, 1, h, w) map of patch logits (30 x 30 at 256 x 256 input).
"""

from __future__ import annotations

import torch
from torch import nn


def official_init(module: nn.Module) -> None:
    """The official `weights_init` over a discriminator: conv weights N(0, 0.02) (biases zeroed), BatchNorm weights
    N(1, 0.02) and biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def check_discriminator_args(name: str, **values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: {key} must be a positive int, got {value!r}")


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN with BatchNorm. Input (B, input_nc, H, W) in [-1, 1] -> logits (B, 1, h, w).

    Example:
        >>> d = PatchDiscriminator()
        >>> d(torch.zeros(2, 3, 256, 256)).shape
        torch.Size([2, 1, 30, 30])
    """

    def __init__(self, *, input_nc: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        check_discriminator_args("PatchDiscriminator", input_nc=input_nc, ndf=ndf, n_layers=n_layers)
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):  # the last of these keeps stride 1 (pix2pix)
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),  # bias-free: BatchNorm follows
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official `weights_init`: conv N(0, 0.02), BatchNorm weight N(1, 0.02) and bias 0."""
        official_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.main[0].in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"PatchDiscriminator: x must be (B, {self.main[0].in_channels}, H, W), got {shape}")
        return self.main(x)
