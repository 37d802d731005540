"""Shared inputs for the eval tests: crops of scikit-image's sample photos as (B, 3, H, W) tensors in [-1, 1]."""

import numpy as np
import pytest
import torch

skimage_data = pytest.importorskip("skimage.data")


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


@pytest.fixture(scope="session")
def crops64() -> torch.Tensor:
    return photo_crops(64, 6)
