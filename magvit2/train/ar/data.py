"""The AR trainer's data: (pre, post, class) from token shards written by `magvit2 encode`, or (image, class) crops
to be tokenized on the fly by the frozen tokenizer; class ids are the sorted parent-folder names."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from magvit2.data.datasets import LabeledCropFolder
from magvit2.data.images import list_images, usable_images
from magvit2.data.tokens import INDEX_NAME, TokenShards, unpack_groups
from magvit2.train.ar.config import ARDataConfig
from magvit2.train.common.resume import ResumableLoader


class TokenLabels(Dataset):
    """(pre (T,), post (T,), class id) from token shards; class names as the shards store them (sorted parent-folder
    names of the sources). The shards must fit the model: a grid of `block_size` tokens (when given) and a codebook
    of 2^sum(bits) codes."""

    def __init__(self, directory: str | os.PathLike, bits: tuple[int, int], *, block_size: int | None = None) -> None:
        self.shards, self.bits = TokenShards(directory), bits
        index, meta = Path(directory) / INDEX_NAME, self.shards.meta
        h, w = meta["grid"]
        if block_size is not None and h * w != block_size:
            raise ValueError(
                f"{index}: grid {h}x{w} is {h * w} tokens per image, the model's block_size is {block_size}: "
                f"encode at another size or set model.block_size={h * w}"
            )
        if 2 ** sum(bits) != meta["codebook_size"]:
            log2 = meta["codebook_size"].bit_length() - 1
            raise ValueError(
                f"{index}: codebook_size is 2^{log2}, the model's factorized_bits {tuple(bits)} split 2^{sum(bits)} "
                f"codes: set model.factorized_bits to two ints summing to {log2}"
            )
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

    def __init__(
        self, config: ARDataConfig, bits: tuple[int, int], *, seed: int = 0, block_size: int | None = None
    ) -> None:
        super().__init__()
        config.check_source()
        self.config, self.bits, self.seed, self.block_size = config, bits, seed, block_size

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        if self.config.tokens is not None:
            self.train_set = TokenLabels(self.config.tokens, self.bits, block_size=self.block_size)
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
