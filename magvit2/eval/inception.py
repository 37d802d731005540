"""The pytorch-fid "FID Inception" network (InceptionV3 pool3 features), shared by every FID-style metric.

The official evaluation (reference/open-magvit2.md §3.6) uses pytorch-fid's `InceptionV3([3])` with
`use_fid_inception=True`: a TensorFlow-ported InceptionV3 whose weights live in pytorch-fid's release file
`pt_inception-2015-12-05-6726825d.pth`. `InceptionV3FID` rebuilds that network with the same state-dict keys so the
file loads strictly; nothing is downloaded here: pass the local path to `InceptionV3FID.from_file`.

Example:
    >>> net = InceptionV3FID.from_file("pt_inception-2015-12-05-6726825d.pth").eval()  # doctest: +SKIP
    >>> net(images).shape  # images (B, 3, H, W) in [-1, 1]  # doctest: +SKIP
    torch.Size([B, 2048])
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from magvit2.nn.weights import CheckpointError, safe_torch_load

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048
INPUT_SIZE = 299


class _FrozenBatchNorm(nn.Module):
    """Inference-only BatchNorm: keys weight, bias, running_mean, running_var (no num_batches_tracked, which the
    2018 weights file does not have) and eps 0.001 as in torchvision's BasicConv2d."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class _Conv(nn.Module):
    """conv (no bias) -> BN -> ReLU; keys `conv.weight`, `bn.*` (torchvision BasicConv2d)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = _FrozenBatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 'SAME' average pool divides by the number of real pixels in the window (FIDInception* patch)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):  # 35x35: Mixed_5b/5c/5d -> 224 + pool_features channels
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_same(x))], 1)


class _InceptionB(nn.Module):  # Mixed_6a: 35x35 -> 17x17, 288 -> 768 channels
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionC(nn.Module):  # 17x17: Mixed_6b..6e, factorised 7x7 convolutions, 768 channels
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, self.branch7x7dbl_5(d), self.branch_pool(_avg_pool_same(x))], 1)


class _InceptionD(nn.Module):  # Mixed_7a: 17x17 -> 8x8, 768 -> 1280 channels
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionE(nn.Module):  # 8x8: Mixed_7b (avg pool branch), Mixed_7c (max pool branch) -> 2048 channels
    def __init__(self, cin: int, *, max_pool: bool) -> None:
        super().__init__()
        # pytorch-fid's FIDInceptionE_2 (Mixed_7c) max-pools in its pool branch: the TF graph the weights come from
        # does so, and FID values are only comparable with that quirk kept.
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_same(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class InceptionV3FID(nn.Module):
    """pytorch-fid's FID InceptionV3 up to the final average pool: (B, 3, H, W) in [-1, 1] -> (B, 2048) float32.

    Images are resized to 299x299 (bilinear, align_corners=False, no antialias) as pytorch-fid does. pytorch-fid
    takes [0, 1] and maps it to [-1, 1] after resizing; we take [-1, 1] directly (the resize is affine-invariant, so
    the order does not matter). Construction gives random weights; load the real ones with `from_file`. The 1008-way
    `fc` layer is never run; it is kept so the official file loads with strict key checking (472 tensors).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, c7=128)
        self.Mixed_6c = _InceptionC(768, c7=160)
        self.Mixed_6d = _InceptionC(768, c7=160)
        self.Mixed_6e = _InceptionC(768, c7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, 1008)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"InceptionV3FID: expected float images (B, 3, H, W) in [-1, 1], got {shape}")
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)  # -> (B, 768, 17, 17)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a):
            x = block(x)  # -> (B, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # pool3 features (B, 2048)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> InceptionV3FID:
        """Load pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a plain state dict) from a local path.

        Keys are checked strictly; `*.num_batches_tracked` entries (written by PyTorch >= 0.4.1 re-saves) are ignored.
        Returns the network in eval mode on `device`.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"InceptionV3FID.from_file: path {os.fspath(path)!r} does not exist; expected pytorch-fid's FID "
                f"weights {FID_WEIGHTS_NAME} (download it yourself; nothing is fetched here)"
            )
        try:  # weights-only, CRC32-checked; one line of ours rather than torch's advice to load without weights_only
            state = safe_torch_load(path)
        except CheckpointError as e:
            raise ValueError(f"InceptionV3FID.from_file: {e}") from None
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(
                f"InceptionV3FID.from_file: {os.fspath(path)!r} holds a {type(state).__name__}, not a state dict"
            )
        state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
        odd = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor) or v.is_meta]
        if odd:
            raise ValueError(
                f"InceptionV3FID.from_file: {os.fspath(path)!r} holds values that are not tensors with data: "
                f"{_preview(odd)}"
            )
        net = cls()
        expected = net.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            raise ValueError(
                f"InceptionV3FID.from_file: {os.fspath(path)!r} is not the FID Inception state dict "
                f"({FID_WEIGHTS_NAME}): {len(missing)} missing key(s) {_preview(missing)}, "
                f"{len(unexpected)} unexpected key(s) {_preview(unexpected)}"
            )
        shapes = ((k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items())
        wrong = [f"{k} {got} (expected {want})" for k, got, want in shapes if got != want]
        if wrong:
            raise ValueError(f"InceptionV3FID.from_file: {len(wrong)} tensor(s) of the wrong shape: {_preview(wrong)}")
        net.load_state_dict(state, strict=True)
        return net.to(device).eval()


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"
