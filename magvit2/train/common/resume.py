"""Data order that survives a kill: a resumed run sees exactly the batches an uninterrupted run would have seen.

`EpochSampler` draws epoch e's order from (seed, e) alone and hands rank r of w the items r, r + w, ... of it
(Lightning's DistributedSampler replacement is switched off in build_trainer), so the order never depends on the
global RNG or on what ran before. `ResumableLoader` has the state_dict / load_state_dict pair Lightning saves in
its checkpoints: the epoch and the number of batches the training loop finished in it (set by `DataPosition` at
the end of every batch, before ModelCheckpoint runs; counting batches the loader yielded would be off by
Lightning's one-batch prefetch). A resumed epoch starts after those batches; a checkpoint at an epoch's last batch
resumes at the next epoch's start (its epoch set before Lightning's set_epoch: worker processes draw indices
early). Datasets that declare `takes_epoch = True` receive (index, epoch) keys, so their random crops are drawn
from (seed, epoch, index) too.
`RngState` saves the torch / numpy / Python RNG states (dropout, label dropout) with each checkpoint.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Sampler


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochSampler(Sampler):
    def __init__(self, n: int, *, shuffle: bool, seed: int, drop_last: bool, with_epoch: bool = False) -> None:
        self.n, self.shuffle, self.seed, self.drop_last, self.with_epoch = n, shuffle, seed, drop_last, with_epoch
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def indices(self) -> list[int]:
        """This rank's share of the current epoch's order."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        else:
            order = torch.arange(self.n)
        rank, world = _rank_world()
        per = self.n // world if self.drop_last else -(-self.n // world)
        padded = torch.cat([order, order[: per * world - self.n]]) if per * world > self.n else order
        return padded[rank : per * world : world].tolist()

    def __len__(self) -> int:
        _, world = _rank_world()
        return self.n // world if self.drop_last else -(-self.n // world)

    def __iter__(self):
        start, self.skip = self.skip, 0
        for i in self.indices()[start:]:
            yield (i, self.epoch) if self.with_epoch else i


class ResumableLoader(DataLoader):
    """A DataLoader over an EpochSampler whose position Lightning checkpoints (see the module docstring)."""

    def __init__(self, dataset, *, batch_size: int, shuffle: bool, drop_last: bool, seed: int, **kwargs: Any):
        sampler = EpochSampler(
            len(dataset), shuffle=shuffle, seed=seed, drop_last=drop_last,
            with_epoch=getattr(dataset, "takes_epoch", False),
        )  # fmt: skip
        if drop_last and shuffle and len(sampler) < batch_size:  # training: no batch at all, the run would do nothing
            world = _rank_world()[1]
            per_rank = f" per process ({world} processes)" if world > 1 else ""
            raise ValueError(
                f"data: {len(sampler)} training items{per_rank} are fewer than one batch (data.batch_size="
                f"{batch_size}); lower data.batch_size or add data"
            )
        # its own generator: creating an iterator then draws the workers' base seed without touching the global RNG
        generator = torch.Generator().manual_seed(seed)
        super().__init__(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, generator=generator, **kwargs
        )
        self.finished = 0  # batches of the current epoch the training loop has finished (set by DataPosition)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self.finished}

    def load_state_dict(self, state: dict[str, int]) -> None:
        done = state["batches"] * self.batch_size
        if done >= len(self.sampler):  # saved at its epoch's last batch: the next epoch starts from the beginning
            # ... and is set here, not only by Lightning's set_epoch: on resume Lightning creates the iterator before
            # it calls set_epoch, and worker processes (num_workers > 0) draw their first indices right then
            self.sampler.epoch, self.finished, self.sampler.skip = state["epoch"] + 1, 0, 0
        else:
            self.sampler.epoch, self.finished, self.sampler.skip = state["epoch"], state["batches"], done


class DataPosition(Callback):
    """Records in the training ResumableLoader how many batches of the epoch are done."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.finished = batch_idx + 1

    def on_train_epoch_start(self, trainer, module) -> None:
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader) and loader.sampler.skip == 0:
            loader.finished = 0


class RngState(Callback):
    """The global RNG states in every checkpoint, restored on resume (the checkpointing rank's states). Stored as
    tensors and numbers only, so weights_only loaders still read the checkpoint."""

    def on_save_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "python": (version, torch.tensor(internal, dtype=torch.int64), gauss_next),
        }

    def on_load_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = states["python"]
        random.setstate((version, tuple(internal.tolist()), gauss_next))


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step stored in a Lightning checkpoint; -1 when the file is incomplete (a torch.save file is a zip
    archive: one cut short has no central directory). Reads the metadata only (tensors mmapped). A complete file
    that does not load weights-only raises (CheckpointError, a ValueError naming the file): never skipped quietly."""
    import zipfile

    from magvit2.nn.weights import safe_torch_load

    if not zipfile.is_zipfile(path):
        return -1
    try:
        with warnings.catch_warnings():  # a plain pickle draws a protocol warning; safe_torch_load says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        ckpt = safe_torch_load(path)  # raises with the reason (a pickle that would run code, a damaged file)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("global_step"), int):
        raise ValueError(f"--resume: {path} is not a training checkpoint (no global_step)")
    return ckpt["global_step"]


def newest_checkpoint(folder: str | os.PathLike) -> str | None:
    """The complete checkpoint of `folder` (last.ckpt, step-*.ckpt) with the highest stored step; last.ckpt on a
    tie. A kill during the first last.ckpt write leaves a complete step file: that one is found."""
    folder = Path(folder)
    candidates = [folder / "last.ckpt", *sorted(folder.glob("step-*.ckpt"), reverse=True)]
    steps = [(checkpoint_step(p), -i, p) for i, p in enumerate(candidates) if p.is_file()]
    best = max(steps, default=None)
    return str(best[2]) if best is not None and best[0] >= 0 else None


def resolve_resume(resume: str | None, out_dir: str | os.PathLike) -> str | None:
    """--resume PATH, or 'auto': the newest complete checkpoint in <out>/checkpoints (a fresh run when none)."""
    if resume is None:
        return None
    if resume == "auto":
        return newest_checkpoint(Path(out_dir) / "checkpoints")
    if not Path(resume).is_file():
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    return resume
