"""Checkpoint files that survive a kill: written atomically, read weights-only (Lightning's checkpoint IO plugin)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from magvit2.nn.weights import safe_torch_load, temp_name


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same folder, fsynced, then renamed over the target: a killed
    or failing write leaves the previous file whole (never a truncated .ckpt). ModelCheckpoint writes
    step-N.ckpt before last.ckpt, so last.ckpt only moves once a complete step checkpoint exists. Reading (resume)
    goes through the weights-only loader: a checkpoint whose pickle would run code is refused, whatever torch's
    default."""

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        if weights_only is False:
            raise ValueError("AtomicCheckpointIO loads weights-only: weights_only=False is refused")
        return safe_torch_load(path)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(temp_name(path))
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a power cut
        finally:
            os.close(fd)
