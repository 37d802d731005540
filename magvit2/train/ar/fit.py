"""Fit (or resume) an AR model: tokens from shards or on the fly, on the common Lightning Trainer.

Checkpoints hold `transformer.*` and the frozen tokenizer under `first_stage_model.*` (when one is known): the
official AR layout, so `magvit2 export` and `magvit2 sample` read them directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import lightning as L

from magvit2.checkpoints.image import build_from_state, load_checkpoint
from magvit2.data.tokens import INDEX_NAME
from magvit2.train.ar.config import ARTrainConfig
from magvit2.train.ar.data import ARDataModule
from magvit2.train.ar.module import ARModule
from magvit2.train.common.builder import build_trainer
from magvit2.train.common.run_folder import run_folder


def tokenizer_of_shards(directory: str | os.PathLike, bits: tuple[int, int]):
    """The tokenizer directory that `magvit2 encode` recorded for these shards, with the AR token split, or None."""
    index = Path(directory) / INDEX_NAME
    if not index.is_file():
        raise FileNotFoundError(
            f"{index} not found: not a token folder written by `magvit2 encode` (images: add --tokenizer MODEL)"
        )
    meta = json.loads(index.read_text())
    source = meta.get("model")
    if not source or not Path(source).exists():
        return None
    return ar_tokenizer(source, bits)


def ar_tokenizer(source: str | os.PathLike, bits: tuple[int, int]):
    """A tokenizer (directory or checkpoint) built with the AR token split, frozen."""
    tok = load_checkpoint(source)  # built again with the AR split rather than patched after construction
    config = dataclasses.replace(tok.config, factorized_bits=tuple(bits))
    return build_from_state(config, tok.state_dict(), str(source)).eval().requires_grad_(False)


def fit_ar(
    config: ARTrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: str | None = None,
    progress: bool = True,
    callbacks: list[L.Callback] = (),
) -> tuple[L.Trainer, ARModule]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    bits = config.ar_config().factorized_bits
    datamodule = ARDataModule(config.data, bits, seed=config.trainer.seed)
    if config.data.tokens is not None:
        tokenizer = tokenizer_of_shards(config.data.tokens, bits)
    else:
        tokenizer = ar_tokenizer(config.data.tokenizer, bits)
    module = ARModule(config, tokenizer, class_names=datamodule.class_names)
    with run_folder(out, resume) as (ckpt_path, signals):
        trainer = build_trainer(
            config,
            out,
            callbacks=list(callbacks),
            progress=progress,
            steps_per_batch=1,
            what="AR training",
            resuming=ckpt_path is not None,
            signals=signals,
            gradient_clip_val=config.optim.grad_clip or None,
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer, module
