"""The tokenizer trainer's data: folders of images (ImageNet layout or plain) as a Lightning data module, and
folders of videos for the video tokenizer.

Training images: resize the shorter side to `size` (PIL bilinear) and take a random size x size crop, no flip;
validation: resize + center crop (reference §3.5). Pixels become x / 127.5 - 1 in [-1, 1]. Videos: clips of
`data.frames` frames (magvit2.data.video.VideoClips: a random window and crop in training, the centre ones in
validation).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from magvit2.data.datasets import CenterCropFolder, RandomCropFolder
from magvit2.data.images import list_images, usable_images
from magvit2.data.video import VideoClips
from magvit2.train.common.resume import ResumableLoader
from magvit2.train.tokenizer.config import DataConfig


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


class ClipsOnly(torch.utils.data.Dataset):
    """The clips of a VideoClips without their class ids (what the tokenizer trains on); keys pass through."""

    takes_epoch = True

    def __init__(self, clips: VideoClips) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key):
        return self.clips[key][0]


class VideoDataModule(ImageDataModule):
    """Folders of videos (files or frame folders; UCF-101 layout root/train and root/val, or a plain folder) for
    video tokenizer training."""

    def __init__(self, config: DataConfig, *, seed: int = 0) -> None:
        if config.train is None:
            raise ValueError("data.train is not set: pass --data DIR (a folder of videos or frame folders)")
        root = Path(config.train)
        if not root.is_dir():
            raise FileNotFoundError(f"--data / data.train: video folder not found: {root}")
        L.LightningDataModule.__init__(self)
        self.config, self.seed = config, seed
        self.train_dir, self.val_dir = resolve_folders(config.train, config.val)

    def setup(self, stage: str | None = None) -> None:
        c = self.config
        clips = dict(frames=c.frames, size=c.size, frame_stride=c.frame_stride)
        self.train_set = ClipsOnly(VideoClips(self.train_dir, train=True, seed=self.seed, **clips))
        self.val_set = None
        if self.val_dir is not None:
            val = VideoClips(self.val_dir, train=False, **clips)
            if c.val_images is not None:
                val.videos, val.labels = val.videos[: c.val_images], val.labels[: c.val_images]
            self.val_set = ClipsOnly(val)
