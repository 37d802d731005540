"""FID: streaming feature statistics and the Fréchet distance between two Gaussians, as pytorch-fid computes it.

Features come from magvit2/eval/inception.py (rFID of a tokenizer: originals vs reconstructions).

Example:
    >>> net = InceptionV3FID.from_file("pt_inception-2015-12-05-6726825d.pth").eval()  # doctest: +SKIP
    >>> real, fake = FeatureStats(), FeatureStats()  # doctest: +SKIP
    >>> real.update(net(images)); fake.update(net(reconstructions))  # images in [-1, 1]  # doctest: +SKIP
    >>> frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch


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
