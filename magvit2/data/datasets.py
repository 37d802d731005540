"""Map-style datasets over image files, for DataLoader workers: official preprocessing, resumable random crops.

Evaluation / encoding (`ImageFiles`): resize the shorter side + center crop (or native size cut to a multiple of the
model's factor); training (`RandomCropFolder`): resize the shorter side + a random crop drawn from (seed, epoch,
index), no flip (reference §3.5). A file that fails to decode is replaced by the next readable one (`load_or_next`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from magvit2.data.images import folder_labels, load_image, load_or_next, open_rgb, resize_shorter, to_tensor


class ImageFiles(Dataset):
    """Preprocessed images: item i = ((3, H, W) tensor, index of the file read). `size` None keeps native sizes."""

    def __init__(self, paths: Sequence[str | os.PathLike], *, size: int | None, multiple_of: int) -> None:
        self.paths, self.size, self.multiple_of = [Path(p) for p in paths], size, multiple_of

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_or_next(self.paths, i, lambda p: load_image(p, size=self.size, multiple_of=self.multiple_of))


class CenterCropFolder(ImageFiles):
    """Validation images: item i = the (3, size, size) center crop alone."""

    def __init__(self, paths: Sequence[str | os.PathLike], *, size: int) -> None:
        super().__init__(paths, size=size, multiple_of=1)

    def __getitem__(self, i: int) -> torch.Tensor:
        return super().__getitem__(i)[0]


class RandomCropFolder(Dataset):
    """Images from files: resize the shorter side to `size`, random crop. Keys are an index or (index, epoch)
    (a resumable loader passes the epoch): the crop position is drawn from (seed, epoch, index), so a resumed run and
    any number of workers crop exactly as an uninterrupted run."""

    takes_epoch = True

    def __init__(self, paths: Sequence[str | os.PathLike], *, size: int, seed: int = 0) -> None:
        self.paths, self.size, self.seed = [Path(p) for p in paths], size, seed

    def __len__(self) -> int:
        return len(self.paths)

    def _crop(self, path: Path, rng: np.random.Generator) -> torch.Tensor:
        img = resize_shorter(open_rgb(path), self.size)
        top = int(rng.integers(0, img.height - self.size + 1))
        left = int(rng.integers(0, img.width - self.size + 1))
        return to_tensor(img.crop((left, top, left + self.size, top + self.size)))

    def item(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, i])
        return load_or_next(self.paths, i, lambda path: self._crop(path, rng))

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        return self.item(key)[0]


class LabeledCropFolder(RandomCropFolder):
    """(image, class id) pairs for AR training on the fly: the random crop of RandomCropFolder, the class from the
    parent folder's name (sorted names -> 0, 1, ...; the same ids as token shards of the same folder)."""

    def __init__(self, paths: Sequence[str | os.PathLike], *, size: int, seed: int = 0) -> None:
        super().__init__(paths, size=size, seed=seed)
        self.class_names, self.labels = folder_labels(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        image, j = self.item(key)  # the label of the image actually read
        return image, self.labels[j]
