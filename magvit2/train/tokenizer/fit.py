"""Fit (or resume) a tokenizer: the tokenizer module on the common Lightning Trainer, with reconstruction grids.

Besides the common layout (magvit2/train/common/builder.py) a run writes `images/` (reconstruction grids of
validation images with the EMA weights) and `config.yaml` (the resolved config).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from magvit2.data.images import contact_sheet, to_uint8
from magvit2.train.common.builder import build_trainer
from magvit2.train.common.run_folder import run_folder
from magvit2.train.tokenizer.config import TrainConfig
from magvit2.train.tokenizer.data import ImageDataModule, VideoDataModule
from magvit2.train.tokenizer.module import OPTIMIZERS_PER_STEP, TokenizerModule

GRID_ROWS = ("input", "reconstruction")


class ReconstructionGrid(Callback):
    """Every `every_n_steps` training steps (and at the end), save originals over EMA reconstructions as a PNG: a
    contact sheet (tiles enlarged to >= 64 px, rows labelled "input" and "reconstruction"; for clips, the frames of
    the first two, one row each)."""

    def __init__(self, out_dir: str | os.PathLike, *, every_n_steps: int, count: int = 8) -> None:
        self.out_dir, self.every, self.count = Path(out_dir), every_n_steps, count
        self.images: torch.Tensor | None = None

    def _pick(self, trainer: L.Trainer) -> torch.Tensor | None:
        if self.images is None:
            dm = trainer.datamodule
            dataset = getattr(dm, "val_set", None) or getattr(dm, "train_set", None)
            if dataset is None or len(dataset) == 0:
                return None
            self.images = torch.stack([dataset[i] for i in range(min(self.count, len(dataset)))])
        return self.images

    def save(self, trainer: L.Trainer, module: TokenizerModule, name: str) -> Path | None:
        images = self._pick(trainer)
        if images is None or not trainer.is_global_zero:
            return None
        from PIL import Image

        model = module.ema_tokenizer()
        with torch.inference_mode():
            x = images.to(module.device)
            rec = model.decode(model.encode(x)[0])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / name
        if x.dim() == 5:  # clips: per clip a row of its input frames over a row of their reconstructions
            rows = [to_uint8(v[:, k]) for c in range(min(2, len(x))) for v in (x[c], rec[c]) for k in range(x.shape[2])]
            sheet = contact_sheet(np.stack(rows), x.shape[2], row_labels=GRID_ROWS * min(2, len(x)))
        else:
            sheet = contact_sheet(np.concatenate([to_uint8(x), to_uint8(rec)]), len(x), row_labels=GRID_ROWS)
        Image.fromarray(sheet).save(path)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = pl_module.batch_step
        if self.every > 0 and step % self.every == 0:
            self.save(trainer, pl_module, f"step-{step:06d}.png")

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer, pl_module, "final.png")


def fit_tokenizer(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    datamodule: L.LightningDataModule | None = None,
    resume: str | None = None,
    progress: bool = True,
    callbacks: list[Callback] = (),
    strategy: Any = None,
) -> tuple[L.Trainer, TokenizerModule]:
    """Train (or resume) a tokenizer; returns the trainer and the module (EMA weights via `module.ema_tokenizer()`)."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    datamodule = datamodule or (VideoDataModule if config.video else ImageDataModule)(
        config.data, seed=config.trainer.seed
    )
    module = TokenizerModule(config)
    t = config.trainer
    grids = ReconstructionGrid(out / "images", every_n_steps=t.image_every_n_steps, count=t.grid_images)
    with run_folder(out, resume) as (ckpt_path, signals):
        trainer = build_trainer(
            config,
            out,
            callbacks=[grids, *callbacks],
            progress=progress,
            strategy=strategy,
            steps_per_batch=OPTIMIZERS_PER_STEP,
            what="video tokenizer training" if config.video else "tokenizer training",
            resuming=ckpt_path is not None,
            signals=signals,
        )
        if trainer.is_global_zero:
            (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer, module
