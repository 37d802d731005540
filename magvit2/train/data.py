"""Training data: image folders (ImageNet layout or plain) and the embedded sample photographs of the demo.

Training images: resize the shorter side to `size` (PIL bilinear) and take a random size x size crop, no flip;
validation: resize + center crop (reference §3.5). Pixels become x / 127.5 - 1 in [-1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from magvit2.data.images import folder_labels, list_images, load_image, load_or_next, open_rgb, usable_images
from magvit2.train.config import DataConfig
from magvit2.train.resumable import ResumableLoader


def _resize_shorter(img, size: int):
    from PIL import Image

    w, h = img.width, img.height
    new = (size, max(size, int(size * h / w))) if w <= h else (max(size, int(size * w / h)), size)
    return img.resize(new, Image.BILINEAR)


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 127.5 - 1.0


class RandomCropFolder(Dataset):
    """Images from files: resize the shorter side to `size`, random crop. Keys are an index or (index, epoch)
    (ResumableLoader passes the epoch): the crop position is drawn from (seed, epoch, index), so a resumed run and
    any number of workers crop exactly as an uninterrupted run. A file that fails to decode is replaced by the
    next readable one (load_or_next)."""

    takes_epoch = True

    def __init__(self, paths: list[Path], *, size: int, seed: int = 0) -> None:
        self.paths, self.size, self.seed = [Path(p) for p in paths], size, seed

    def __len__(self) -> int:
        return len(self.paths)

    def _crop(self, path: Path, rng: np.random.Generator) -> torch.Tensor:
        img = _resize_shorter(open_rgb(path), self.size)
        top = int(rng.integers(0, img.height - self.size + 1))
        left = int(rng.integers(0, img.width - self.size + 1))
        pixels = np.asarray(img.crop((left, top, left + self.size, top + self.size)), dtype=np.uint8)
        return _to_tensor(pixels)

    def item(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, i])
        return load_or_next(self.paths, i, lambda path: self._crop(path, rng))

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        return self.item(key)[0]


class LabeledCropFolder(RandomCropFolder):
    """(image, class id) pairs for AR training on the fly: the random crop of RandomCropFolder, the class from the
    parent folder's name (sorted names -> 0, 1, ...; the same ids as token shards of the same folder)."""

    def __init__(self, paths: list[Path], *, size: int, seed: int = 0) -> None:
        super().__init__(paths, size=size, seed=seed)
        self.class_names, self.labels = folder_labels(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        image, j = self.item(key)  # the label of the image actually read
        return image, self.labels[j]


class CenterCropFolder(Dataset):
    def __init__(self, paths: list[Path], *, size: int) -> None:
        self.paths, self.size = [Path(p) for p in paths], size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_or_next(self.paths, i, lambda p: load_image(p, size=self.size))[0]


def resolve_folders(train: str | os.PathLike, val: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """ImageNet layout (root/train, root/val) or a plain folder (training images; validation only when given)."""
    root = Path(train)
    if not root.is_dir():
        raise FileNotFoundError(f"--data / data.train: image folder not found: {root}")
    if val is None and (root / "train").is_dir():
        return root / "train", (root / "val" if (root / "val").is_dir() else None)
    return root, (Path(val) if val is not None else None)


class ImageDataModule(L.LightningDataModule):
    """Folders of images for tokenizer training (Lightning shards the training set across ranks)."""

    def __init__(self, config: DataConfig, *, seed: int = 0) -> None:
        super().__init__()
        if config.train is None:
            raise ValueError("data.train is not set: pass --data DIR (an image folder or an ImageNet-layout root)")
        self.config, self.seed = config, seed
        self.train_dir, self.val_dir = resolve_folders(config.train, config.val)

    def setup(self, stage: str | None = None) -> None:
        c = self.config
        self.train_set = RandomCropFolder(usable_images(list_images(self.train_dir)), size=c.size, seed=self.seed)
        self.val_set = None
        if self.val_dir is not None:
            files = usable_images(list_images(self.val_dir))[: c.val_images]
            self.val_set = CenterCropFolder(files, size=c.size)

    def train_dataloader(self) -> DataLoader:
        c = self.config
        return ResumableLoader(
            self.train_set,
            batch_size=c.batch_size,
            shuffle=True,
            drop_last=True,
            seed=self.seed,
            num_workers=c.num_workers,
            persistent_workers=c.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        c = self.config
        return ResumableLoader(
            self.val_set, batch_size=c.val_batch_size, shuffle=False, drop_last=False, seed=0, num_workers=c.num_workers
        )


# --- the embedded default data: photographs shipped inside scikit-image (and scikit-learn when installed) ----------

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
    pil = _resize_shorter(Image.fromarray(img[..., :3]), shorter_side)
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
        return _to_tensor(photo[top : top + self.size, left : left + self.size])


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
