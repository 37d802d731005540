"""Whether a checkpoint given to --resume fits the run: the same trainer kind and the same architecture. Checked in
the modules' on_load_checkpoint, before Lightning loads the weights, so a mismatch is one line naming what differs
(not Lightning's page of missing keys and size mismatches)."""

from __future__ import annotations

from typing import Any

import torch


def check_resume_checkpoint(checkpoint: dict[str, Any], module: torch.nn.Module, kind: str, path: Any) -> None:
    """ValueError when `checkpoint` (read from `path`) was written by another trainer kind than `kind` or its
    weights' names or shapes differ from `module`'s."""
    info = checkpoint.get("magvit2") or {}
    other = info.get("kind")
    if other is not None and other != kind:
        raise ValueError(f"--resume {path}: a checkpoint of `magvit2 train {other}`, this is `magvit2 train {kind}`")
    saved, own = checkpoint.get("state_dict", {}), module.state_dict()
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        what = f"{len(missing)} weight(s) missing (e.g. {missing[0]})" if missing else ""
        what += ("; " if what else "") + (f"{len(unexpected)} unknown (e.g. {unexpected[0]})" if unexpected else "")
        raise ValueError(f"--resume {path}: not a checkpoint of this model ({what}); check the config's model section")
    for key, value in own.items():
        if tuple(saved[key].shape) != tuple(value.shape):
            raise ValueError(
                f"--resume {path}: {key} has shape {tuple(saved[key].shape)} in the checkpoint, "
                f"{tuple(value.shape)} in this model: the config's model section differs from the checkpoint's"
            )
