"""The AR trainer's data: (pre, post, class) from token shards written by `magvit2 encode`, or (image, class) crops
to be tokenized on the fly by the frozen tokenizer; class ids are the sorted parent-folder names."""

from __future__ import annotations

import os

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from magvit2.data.datasets import LabeledCropFolder
from magvit2.data.images import list_images, usable_images
from magvit2.data.tokens import TokenShards, unpack_groups
from magvit2.train.ar.config import ARDataConfig
from magvit2.train.common.resume import ResumableLoader


class TokenLabels(Dataset):
    """(pre (T,), post (T,), class id) from token shards; class names as the shards store them (sorted parent-folder
    names of the sources)."""

    def __init__(self, directory: str | os.PathLike, bits: tuple[int, int]) -> None:
        self.shards, self.bits = TokenShards(directory), bits
        self.class_names, self.labels = self.shards.class_names, self.shards.class_ids()
        self.tokens = self.shards.load_all().flatten(1)  # (N, T) full indices
        if len(self.tokens) == 0:
            raise ValueError(f"{directory}: no tokens")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre, post = unpack_groups(self.tokens[i], self.bits)
        return pre, post, self.labels[i]


class ARDataModule(L.LightningDataModule):
    """Batches of (pre, post, class) from token shards, or (images, class) to be tokenized by the module."""

    def __init__(self, config: ARDataConfig, bits: tuple[int, int], *, seed: int = 0) -> None:
        super().__init__()
        config.check_source()
        self.config, self.bits, self.seed = config, bits, seed

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        if self.config.tokens is not None:
            self.train_set = TokenLabels(self.config.tokens, self.bits)
        else:
            files = usable_images(list_images(self.config.images))
            self.train_set = LabeledCropFolder(files, size=self.config.size, seed=self.seed)

    @property
    def class_names(self) -> list[str]:
        """The data's class names in id order (sorted parent-folder names), stored with the model."""
        self.setup()
        return self.train_set.class_names

    def train_dataloader(self) -> DataLoader:
        c = self.config
        return ResumableLoader(
            self.train_set, batch_size=c.batch_size, shuffle=True, drop_last=True, seed=self.seed,
            num_workers=c.num_workers, persistent_workers=c.num_workers > 0,
        )  # fmt: skip
