"""LPIPS perceptual distance with a VGG16 backbone (reference §3.4), written here so that no download happens.

Key names match the official training checkpoint (`loss.perceptual_loss.*`): `scaling_layer.{shift,scale}`,
`net.slice1..5.<torchvision features index>.{weight,bias}` and `lin0..lin4.model.1.weight`.

Weights come from files, never from the network:
- backbone: a torchvision-format VGG16 state dict (`features.<i>.weight`, e.g. torchvision's
  `vgg16-397923af.pth`; classifier keys are ignored) given by path;
- heads: the LPIPS v0.1 linear layers (`lin<i>.model.1.weight`). `heads="auto"` finds the copy that ships inside
  the installed `torchmetrics` or `lpips` package (the same file as the official `vgg.pth`, md5 d507d734...).
Without a backbone file the module refuses to build unless `random_backbone=True` is chosen explicitly: a random
VGG gives a different (weaker) distance, which is fine for tests and smoke runs but not for reported numbers.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from magvit2.nn.weights import check_state_dict, safe_torch_load

# torchvision vgg16().features: conv indices and the LPIPS slice boundaries (relu1_2, relu2_2, relu3_3, relu4_3,
# relu5_3). Every conv is 3x3 padding 1 followed by an in-place ReLU; max-pools sit at 4, 9, 16, 23.
VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
               14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
               28: (512, 512)}  # fmt: skip
VGG16_POOLS = (4, 9, 16, 23)
SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
CHANNELS = (64, 128, 256, 512, 512)
HEAD_FILES = (
    ("torchmetrics", "functional/image/lpips_models/vgg.pth"),
    ("lpips", "weights/v0.1/vgg.pth"),
)


def _layer(i: int) -> nn.Module:
    if i in VGG16_CONVS:
        return nn.Conv2d(*VGG16_CONVS[i], kernel_size=3, padding=1)
    if i in VGG16_POOLS:
        return nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.ReLU(inplace=True)


class VGG16Slices(nn.Module):
    """torchvision's VGG16 `features` (layers 0-29) cut into the five LPIPS slices; forward returns their outputs."""

    def __init__(self) -> None:
        super().__init__()
        for s, (start, stop) in enumerate(SLICES, 1):
            block = nn.Sequential()
            for i in range(start, stop):
                block.add_module(str(i), _layer(i))
            self.add_module(f"slice{s}", block)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in range(1, len(SLICES) + 1):
            x = getattr(self, f"slice{s}")(x)
            feats.append(x)
        return feats

    def load_torchvision(self, state: dict[str, torch.Tensor], origin: str = "backbone") -> None:
        """Copy `features.<i>.{weight,bias}` of a torchvision VGG16 state dict (other keys ignored)."""
        slice_of = {i: s for s, (a, b) in enumerate(SLICES, 1) for i in range(a, b)}
        mapped = {}
        for k, v in state.items():
            parts = k.split(".")
            if len(parts) == 3 and parts[0] == "features" and parts[1].isdigit() and int(parts[1]) in slice_of:
                mapped[f"slice{slice_of[int(parts[1])]}.{parts[1]}.{parts[2]}"] = v
        _strict_load(self, mapped, origin, hint="expected torchvision VGG16 keys features.<i>.weight/bias")


class ScalingLayer(nn.Module):
    """[-1, 1] images -> the input statistics the LPIPS VGG was calibrated with."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """Dropout + 1x1 conv without bias; key `model.1.weight` as in LPIPS."""

    def __init__(self, channels: int, *, dropout: bool = True) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout() if dropout else nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _strict_load(module: nn.Module, state: dict[str, torch.Tensor], origin: str, hint: str) -> None:
    """Every key of `module` from `state` with its shape (other keys of the file are ignored)."""
    ours = {k: v for k, v in state.items() if k in module.state_dict()}
    check_state_dict(module, ours, origin, what=f"LPIPS ({hint})")
    module.load_state_dict(ours, strict=True)


def _load_file(path: str | os.PathLike, argument: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS: {argument} file not found: {path}")
    obj = safe_torch_load(path)  # weights_only, with a clear error for truncated or foreign files
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"LPIPS: {argument} {path} does not hold a state dict")
    return obj


def find_lpips_heads() -> Path | None:
    """The LPIPS v0.1 VGG linear-head file inside an installed torchmetrics or lpips package (found without importing
    them), or None."""
    for package, relative in HEAD_FILES:
        spec = importlib.util.find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(root) / relative
            if candidate.is_file():
                return candidate
    return None


def _normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG distance of two image batches (B, 3, H, W) in [-1, 1] -> (B, 1, 1, 1).

    backbone: path of a torchvision-format VGG16 state dict, or None with `random_backbone=True`.
    heads: path of the linear heads, "auto" (the copy shipped in torchmetrics/lpips), or None (random heads, only
        with `random_backbone=True`). Parameters are frozen: LPIPS is a fixed loss.

    Example:
        >>> lp = LPIPS(backbone=None, random_backbone=True)
        >>> lp(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)).item()
        0.0
    """

    def __init__(
        self,
        *,
        backbone: str | os.PathLike | None,
        heads: str | os.PathLike | None = "auto",
        random_backbone: bool = False,
        dropout: bool = True,
    ) -> None:
        super().__init__()
        if backbone is None and not random_backbone:
            raise ValueError(
                "LPIPS: backbone=None: give the path of a torchvision VGG16 weights file (e.g. vgg16-397923af.pth), "
                "or pass random_backbone=True to use a randomly initialised VGG16 on purpose"
            )
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Slices()
        self.chns = CHANNELS
        for i, c in enumerate(CHANNELS):
            self.add_module(f"lin{i}", NetLinLayer(c, dropout=dropout))
        self.backbone_source = "random" if backbone is None else os.fspath(backbone)
        if backbone is not None:
            self.net.load_torchvision(_load_file(backbone, "backbone"), origin=f"LPIPS backbone {backbone}")
        if heads == "auto":
            heads = find_lpips_heads()
            if heads is None and not random_backbone:
                raise FileNotFoundError(
                    "LPIPS: heads='auto' found no LPIPS vgg.pth in torchmetrics or lpips; pass heads=PATH"
                )
        self.heads_source = "random" if heads is None else os.fspath(heads)
        if heads is not None:
            lins = nn.ModuleDict({f"lin{i}": getattr(self, f"lin{i}") for i in range(len(CHANNELS))})
            _strict_load(lins, _load_file(heads, "heads"), f"LPIPS heads {heads}", "expected lin<i>.model.1.weight")
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape or x.dim() != 4:
            raise ValueError(
                f"LPIPS: x and y must be (B, 3, H, W) tensors of one shape, got "
                f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}"
            )
        if x.shape[1] != 3:
            raise ValueError(f"LPIPS: images must have 3 channels, got {x.shape[1]}")
        feats = self.net(self.scaling_layer(torch.cat([x, y])))  # one pass over both batches
        total = x.new_zeros(x.shape[0], 1, 1, 1)
        for i, f in enumerate(feats):
            fx, fy = _normalize(f).chunk(2)
            total = total + getattr(self, f"lin{i}")((fx - fy).square()).mean(dim=(2, 3), keepdim=True)
        return total
