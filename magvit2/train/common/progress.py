"""What a training run prints: one progress bar in training steps (true total, ETA) on rank 0, one line saying what
runs where, and none of Lightning's chatter (device banners, adverts, warnings that do not apply to our trainers).

Lightning's own bar restarts every epoch (on a 40-image folder: a new bar every 2 steps), counts the tokenizer's
two optimizer steps per batch, and shows `0/?` while it sets up; this one counts the steps `--max-steps` counts.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

# Lightning info lines a run of ours does not need: device banners (the start line below says what runs where), the
# cloud-logging adverts, and "`Trainer.fit` stopped: `max_steps=80` reached" (its count is optimizer steps).
DROPPED_INFO = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "IPU available:",
    "\U0001f4a1 Tip:",
    "`Trainer.fit` stopped:",
    "Initializing distributed:",  # the DDP banner: the start line gives the process count
    "-" * 20,
)
# Warnings that do not apply to our trainers, with the reason each is safe to drop.
DROPPED_WARNINGS = (
    # logging counts steps across epochs, so a short epoch still logs every log_every_n_steps
    r".*is smaller than the logging interval.*",
    # the AR module holds its frozen tokenizer, and the tokenizer module its EMA copy, in eval mode on purpose
    r".*module\(s\) in eval mode at the start of training.*",
    # num_workers=0 is a choice of the config (data.num_workers)
    r".*does not have many workers which may be a bottleneck.*",
    r".*no pre-optimization state was saved.*",
    r".*isinstance.treespec, LeafSpec.*",
    r".*Total length of .list. across ranks is zero.*",  # no validation folder
    # DDP compares the strides of 1x1 kernels' gradients, whose size-1 dims make any strides the same memory layout
    r"(?s)Grad strides do not match bucket view strides.*grad\.sizes\(\) = \[\d+, \d+, 1, 1\]",
)


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(DROPPED_INFO)


_DROP_INFO = _DropInfo()


def quiet_lightning() -> None:
    """Drop the lines above (idempotent; other Lightning messages and warnings pass)."""
    loggers = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
               "lightning.fabric.utilities.distributed")  # fmt: skip
    for name in loggers:
        logging.getLogger(name).addFilter(_DROP_INFO)
    for pattern in DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class StepProgress(Callback):
    """One tqdm bar on rank 0 (stderr) over the run's training steps: initial = the step a resumed run starts from,
    total = max_steps, or max_epochs x batches per epoch when that ends the run first. `steps_per_batch`: optimizer
    steps per training step (2 for the tokenizer's G and D updates)."""

    def __init__(self, *, steps_per_batch: int = 1, what: str = "training") -> None:
        self.steps_per_batch, self.what = steps_per_batch, what
        self.bar = None

    def total_steps(self, trainer: L.Trainer) -> int | None:
        bounds = []
        if trainer.max_steps is not None and trainer.max_steps > 0:
            bounds.append(trainer.max_steps // self.steps_per_batch)
        batches = trainer.num_training_batches
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and math.isfinite(batches):
            bounds.append(trainer.max_epochs * int(batches))
        return min(bounds) if bounds else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from tqdm import tqdm

        done, total = trainer.global_step // self.steps_per_batch, self.total_steps(trainer)
        device = trainer.strategy.root_device.type
        print(
            f"{self.what} on {device}: {trainer.world_size} process(es), {torch.get_num_threads()} CPU thread(s) "
            f"each; steps {done} -> {total if total is not None else 'no limit'}",
            file=sys.stderr,
            flush=True,
        )
        self.bar = tqdm(total=total, initial=done, unit="step", desc="train", file=sys.stderr, dynamic_ncols=True)

    def _postfix(self, trainer: L.Trainer) -> dict[str, str]:
        shown = {}
        for key, value in trainer.progress_bar_metrics.items():
            if key == "batches":
                continue
            shown[key.split("/")[-1] if key.startswith("train/") else key] = f"{float(value):.4g}"
        return shown

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        step = trainer.global_step // self.steps_per_batch
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(self._postfix(trainer), refresh=False)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.set_postfix(self._postfix(trainer))

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()
