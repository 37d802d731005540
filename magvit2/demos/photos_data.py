"""The photo tokenizer demo's data: photographs shipped inside scikit-image (and scikit-learn when installed), as
reproducible random crops in a Lightning data module; nothing is downloaded."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from magvit2.data.images import resize_shorter, to_tensor
from magvit2.train.common.resume import ResumableLoader
from magvit2.train.tokenizer.config import DataConfig

TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "coffee",
                "camera", "coins", "brick", "grass", "gravel", "moon", "sklearn:china")  # fmt: skip
HELDOUT_PHOTOS = ("chelsea", "sklearn:flower", "stereo_motorcycle")


def load_photo(name: str, *, shorter_side: int = 256) -> np.ndarray:
    """(H, W, 3) uint8, resized so the shorter side is `shorter_side`. Names: skimage.data functions or
    `sklearn:<china|flower>`; nothing is downloaded."""
    from PIL import Image

    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name.split(':', 1)[1]}.jpg")
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo pairs: the left view
            img = img[0]
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (255 * (img.astype(np.float64) - img.min()) / max(float(np.ptp(img)), 1e-12)).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    pil = resize_shorter(Image.fromarray(img[..., :3]), shorter_side)
    return np.asarray(pil, dtype=np.uint8)


def available_photos(names: tuple[str, ...]) -> list[str]:
    """The names whose package is installed (scikit-learn is optional)."""
    import importlib.util

    have_sklearn = importlib.util.find_spec("sklearn") is not None
    return [n for n in names if have_sklearn or not n.startswith("sklearn:")]


class PhotoCrops(Dataset):
    """`length` crops of `size` x `size` from a list of photos; crop i comes from photo i mod len(photos) at a
    position drawn from a generator seeded with (seed, i): a fixed, reproducible dataset (a resumed run and every
    DDP rank see the same crops for the same index) without per-epoch state that prefetching could miss."""

    def __init__(self, photos: list[np.ndarray], *, size: int, length: int, seed: int = 0):
        if not photos:
            raise ValueError("PhotoCrops: no photos")
        small = [p.shape for p in photos if min(p.shape[:2]) < size]
        if small:
            raise ValueError(f"PhotoCrops: crop size {size} exceeds photos of shape {small}")
        self.photos, self.size, self.length, self.seed = photos, size, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, i])
        photo = self.photos[i % len(self.photos)]
        top = int(rng.integers(0, photo.shape[0] - self.size + 1))
        left = int(rng.integers(0, photo.shape[1] - self.size + 1))
        return to_tensor(photo[top : top + self.size, left : left + self.size])


class PhotoDataModule(L.LightningDataModule):
    """Random crops of the embedded training photographs; a fixed set of crops of held-out photographs for
    validation (different pictures, not only different crops)."""

    def __init__(self, config: DataConfig, *, train_crops: int = 16384, val_crops: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.config, self.train_crops, self.val_crops, self.seed = config, train_crops, val_crops, seed

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        size = self.config.size
        train = [load_photo(n) for n in available_photos(TRAIN_PHOTOS)]
        heldout = [load_photo(n) for n in available_photos(HELDOUT_PHOTOS)]
        self.train_set = PhotoCrops(train, size=size, length=self.train_crops, seed=self.seed)
        self.val_set = PhotoCrops(heldout, size=size, length=self.val_crops, seed=self.seed + 1)

    def train_dataloader(self) -> DataLoader:
        c = self.config
        return ResumableLoader(self.train_set, batch_size=c.batch_size, shuffle=False, drop_last=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        c = self.config
        return ResumableLoader(self.val_set, batch_size=c.val_batch_size, shuffle=False, drop_last=False, seed=0)
