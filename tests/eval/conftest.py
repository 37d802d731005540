"""Shared inputs for the eval tests: crops of scikit-image's sample photos as (B, 3, H, W) tensors in [-1, 1]."""

import numpy as np
import pytest
import skimage.data as skimage_data
import torch

from magvit2.eval import InceptionV3FID


def photo_crops(size: int, count: int) -> torch.Tensor:
    """`count` different size x size crops of astronaut, chelsea and coffee -> (count, 3, size, size) in [-1, 1]."""
    photos = [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee()]
    crops = []
    for i in range(count):
        img = photos[i % len(photos)]
        top = (37 * i + 50) % (img.shape[0] - size)
        left = (61 * i + 80) % (img.shape[1] - size)
        crops.append(img[top : top + size, left : left + size])
    pixels = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()  # (count, 3, size, size) 0..255
    return pixels / 127.5 - 1


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run these tests on one intra-op thread. Measured on the 2-core test machine while another process kept a core
    busy: the whole folder took 58 s with two threads and 18 s with one (the 2048 x 2048 eigendecomposition of the
    Fréchet distance alone: 18-36 s vs 3-4 s), because the BLAS/LAPACK threads wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def crops64() -> torch.Tensor:
    return photo_crops(64, 6)


def _he_init(net: InceptionV3FID, seed: int = 0) -> InceptionV3FID:
    """Variance-preserving random weights and BN statistics, so activations stay O(1) through the 94 convs
    (the default init shrinks the pool3 features to ~1e-8) and the tests compare meaningful numbers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("conv.weight"):
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2 / fan_in) ** 0.5)
            elif name.endswith("bn.running_mean") or name.endswith("bn.bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("bn.running_var") or name.endswith("bn.weight"):
                t.copy_(1 + 0.1 * torch.rand(t.shape, generator=g))
    return net.eval()


@pytest.fixture(scope="session")
def inception() -> InceptionV3FID:
    """A randomly initialised FID Inception (no weights offline), shared because building it takes ~1 s."""
    return _he_init(InceptionV3FID())


@pytest.fixture(scope="session")
def crops32() -> torch.Tensor:
    return photo_crops(32, 6)
