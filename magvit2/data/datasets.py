"""Map-style datasets over image files, for DataLoader workers: official preprocessing, resumable random crops.

Evaluation / encoding (`ImageFiles`): resize the shorter side + center crop (or native size cut to a multiple of the
model's factor); training (`RandomCropFolder`): resize the shorter side + a random crop drawn from (seed, epoch,
index), no flip (reference §3.5).

A file that passes the header scan but fails to decode (truncated data): encoding and evaluation skip and count it
(`ImageFiles` + `ImageFiles.collate`: each readable image once, metrics over readable images only); training
replaces it by the next readable one (`load_or_next`, with a warning): a random-crop dataset keeps its length and
batch size, and one image seen twice in an epoch does not bias a loss the way it would bias a metric or a shard.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from magvit2.data.images import (
    UnreadableImage,
    folder_labels,
    load_image,
    load_or_next,
    open_rgb,
    resize_shorter,
    to_tensor,
)


class ImageBatch(NamedTuple):
    images: torch.Tensor | None  # (B, 3, H, W) of the readable files of the batch; None when there is none
    ids: torch.Tensor  # (B,) int64: their indices into the dataset's paths
    skipped: list[str]  # "<path>: <why>" of the files that failed to decode


class ImageFiles(Dataset):
    """Preprocessed images: item i = ((3, H, W) tensor, i), or (the reason, a str, i) when file i fails to decode:
    nothing is read in its place. Batch with `collate_fn=ImageFiles.collate`. `size` None keeps native sizes.

    Example:
        >>> loader = DataLoader(ImageFiles(files, size=256, multiple_of=16), batch_size=8,
        ...                     collate_fn=ImageFiles.collate)  # doctest: +SKIP
        >>> images, ids, skipped = next(iter(loader))  # doctest: +SKIP
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, size: int | None, multiple_of: int) -> None:
        self.paths, self.size, self.multiple_of = [Path(p) for p in paths], size, multiple_of

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | str, int]:
        try:
            return load_image(self.paths[i], size=self.size, multiple_of=self.multiple_of), i
        except UnreadableImage as e:  # "cannot read image <path>: <why>" -> "<path>: <why>", as the header scan's
            return str(e).removeprefix("cannot read image "), i

    @staticmethod
    def collate(items: Sequence[tuple[torch.Tensor | str, int]]) -> ImageBatch:
        """Items -> an ImageBatch of the readable ones, the others' reasons in `skipped`."""
        read = [(x, i) for x, i in items if isinstance(x, torch.Tensor)]
        images = torch.stack([x for x, _ in read]) if read else None
        skipped = [x for x, _ in items if isinstance(x, str)]
        return ImageBatch(images, torch.tensor([i for _, i in read], dtype=torch.long), skipped)


class ReadableBatches:
    """The (images, ids) batches of a DataLoader over `ImageFiles` (with its collate) that hold an image; the
    reasons of the files skipped so far gather in `skipped`. Its length is the loader's (a progress-bar total)."""

    def __init__(self, loader) -> None:
        self.loader, self.skipped = loader, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.skipped += batch.skipped
            if batch.images is not None:
                yield batch.images, batch.ids


class CenterCropFolder(ImageFiles):
    """Validation images during training: item i = the (3, size, size) center crop alone; a file that fails to
    decode is replaced by the next readable one (`load_or_next`), as in training."""

    def __init__(self, paths: Sequence[str | os.PathLike], *, size: int) -> None:
        super().__init__(paths, size=size, multiple_of=1)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_or_next(self.paths, i, lambda p: load_image(p, size=self.size, multiple_of=1))[0]


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
