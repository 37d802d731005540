"""rFID: the pytorch-fid "FID Inception" network, streaming feature statistics and the Fréchet distance.

The official evaluation (reference/open-magvit2.md §3.6) uses pytorch-fid's `InceptionV3([3])` with
`use_fid_inception=True`: a TensorFlow-ported InceptionV3 whose weights live in pytorch-fid's release file
`pt_inception-2015-12-05-6726825d.pth`. `InceptionV3FID` rebuilds that network with the same state-dict keys so the
file loads strictly; nothing is downloaded here: pass the local path to `InceptionV3FID.from_file`.

Example:
    >>> net = InceptionV3FID.from_file("pt_inception-2015-12-05-6726825d.pth").eval()
    >>> real, fake = FeatureStats(), FeatureStats()
    >>> real.update(net(images)); fake.update(net(reconstructions))   # images in [-1, 1]
    >>> frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, truncated files, non-tensor objects
            raise ValueError(f"InceptionV3FID.from_file: cannot read {os.fspath(path)!r} as a state dict: {e}") from e
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(
                f"InceptionV3FID.from_file: {os.fspath(path)!r} holds a {type(state).__name__}, not a state dict"
            )
        state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
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


class FeatureStats:
    """Streaming mean and covariance of feature rows, in float64: sum, sum of outer products and count.

    `update` takes (B, D) features; `mean` is (D,), `covariance` (D, D) unbiased (as `np.cov(rowvar=False)`).
    Accumulators from several processes combine by summing: `merge(other)` here, or `dist.all_reduce` on each
    tensor of `state()` in place (they are the live accumulators).
    """

    def __init__(self, dim: int | None = None, *, device: str | torch.device | None = None) -> None:
        self.dim = dim
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.sum: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None
        if dim is not None:
            self._allocate(dim, device)

    def _allocate(self, dim: int, device) -> None:
        self.dim = dim
        self.count = self.count.to(device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        """Add (B, D) feature rows."""
        if not isinstance(features, torch.Tensor) or features.dim() != 2:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"FeatureStats.update: expected features (B, D), got {shape}")
        if self.sum is None:
            self._allocate(features.shape[1], features.device)
        if features.shape[1] != self.dim:
            raise ValueError(f"FeatureStats.update: expected {self.dim} features per row, got {features.shape[1]}")
        f = features.detach().to(self.sum.device, torch.float64)
        self.sum += f.sum(0)
        self.outer += f.T @ f
        self.count += f.shape[0]

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's rows into this one (in place); returns self."""
        if other.sum is None:
            return self
        if self.sum is None:
            self._allocate(other.dim, other.sum.device)
        if other.dim != self.dim:
            raise ValueError(f"FeatureStats.merge: feature sizes differ: {self.dim} vs {other.dim}")
        self.sum += other.sum.to(self.sum.device)
        self.outer += other.outer.to(self.outer.device)
        self.count += other.count.to(self.count.device)
        return self

    def state(self) -> dict[str, torch.Tensor]:
        """The live accumulators {count (), sum (D,), outer (D, D)}: sum-reduce them to combine processes."""
        if self.sum is None:
            raise ValueError("FeatureStats.state: no features yet (the feature size is unknown)")
        return {"count": self.count, "sum": self.sum, "outer": self.outer}

    @property
    def num_samples(self) -> int:
        return int(self.count)

    @property
    def mean(self) -> torch.Tensor:
        """(D,) float64."""
        if self.num_samples < 1:
            raise ValueError("FeatureStats.mean: no features accumulated")
        return self.sum / self.num_samples

    @property
    def covariance(self) -> torch.Tensor:
        """(D, D) float64, unbiased (divides by n - 1)."""
        n = self.num_samples
        if n < 2:
            raise ValueError(f"FeatureStats.covariance: needs at least 2 feature rows, got {n}")
        mu = self.sum / n
        cov = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return (cov + cov.T) / 2  # exact symmetry for eigh (the two triangles round differently)


def _as_float64(x) -> torch.Tensor:
    return torch.as_tensor(x if isinstance(x, torch.Tensor) else np.asarray(x), dtype=torch.float64)


def _trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """tr(sqrtm(s1 @ s2)) for symmetric PSD s1, s2, with symmetric eigendecompositions only (no sqrtm).

    s1 s2 is similar to sqrt(s1) s2 sqrt(s1), which is symmetric PSD, so the trace is the sum of square roots of its
    eigenvalues. With s1 = V diag(w) V^T restricted to the r eigenvalues above rounding level, the nonzero eigenvalues
    of that matrix are those of the r x r matrix diag(sqrt w) (V^T s2 V) diag(sqrt w): when s1 is singular (fewer
    samples than feature dimensions) the second eigendecomposition is tiny instead of another D x D one.
    """
    w, v = torch.linalg.eigh(s1)
    keep = _drop_noise(w) > 0
    if not keep.any():  # s1 = 0 (one repeated feature vector): s1 s2 = 0
        return s1.new_zeros(())
    v, root = v[:, keep], w[keep].sqrt()  # (D, r), (r,)
    m = root[:, None] * (v.T @ s2 @ v) * root[None, :]  # (r, r)
    return _drop_noise(torch.linalg.eigvalsh((m + m.T) / 2)).sqrt().sum()


def _drop_noise(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix with those below rounding level (D * eps * max |w|, the rank cut-off of
    np.linalg.matrix_rank) set to 0. Covariances of fewer samples than dimensions are singular; square roots of
    their ~1e-16 noise eigenvalues would add ~1e-8 each (measured on a 32-d rank-9 covariance: FD(x, x) = 4e-6
    without the cut, 6e-14 with it)."""
    tol = w.shape[-1] * torch.finfo(w.dtype).eps * w.abs().max()
    return torch.where(w > tol, w, torch.zeros_like(w))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1 - mu2|^2 + tr(s1 + s2 - 2 sqrt(s1 s2)).

    mu: (D,), sigma: (D, D) symmetric PSD; tensors or arrays. Same value as pytorch-fid's
    `calculate_frechet_distance` (scipy.linalg.sqrtm), computed in torch float64 via eigendecompositions, which stay
    accurate on singular covariances (fewer samples than dimensions). If an eigendecomposition fails to converge,
    `eps` * I is added to both covariances, as pytorch-fid does when its sqrtm is not finite.
    """
    mu1, mu2, sigma1, sigma2 = (_as_float64(t) for t in (mu1, mu2, sigma1, sigma2))
    if mu1.dim() != 1 or mu1.shape != mu2.shape:
        raise ValueError(
            f"frechet_distance: means must be vectors of one length, got {tuple(mu1.shape)}, {tuple(mu2.shape)}"
        )
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"frechet_distance: {name} must be ({d}, {d}) to match the means, got {tuple(s.shape)}")
    sigma1 = (sigma1 + sigma1.T) / 2  # eigh reads one triangle only; average so both count
    sigma2 = (sigma2.to(sigma1.device) + sigma2.T.to(sigma1.device)) / 2
    try:
        tr_covmean = _trace_sqrt_product(sigma1, sigma2)
    except torch.linalg.LinAlgError:
        offset = eps * torch.eye(d, dtype=torch.float64, device=sigma1.device)
        tr_covmean = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    diff = mu1 - mu2.to(mu1.device)
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_covmean)
