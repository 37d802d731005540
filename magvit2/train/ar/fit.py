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
import torch

from magvit2.checkpoints.image import build_from_state, load_checkpoint
from magvit2.data.tokens import INDEX_NAME, config_sha256
from magvit2.train.ar.config import ARTrainConfig
from magvit2.train.ar.data import ARDataModule
from magvit2.train.ar.module import ARModule
from magvit2.train.common.builder import build_trainer
from magvit2.train.common.run_folder import run_folder


def tokenizer_of_shards(directory: str | os.PathLike, bits: tuple[int, int], tokenizer: str | None = None):
    """The tokenizer that encoded these shards, with the AR token split: `tokenizer` when given (data.tokenizer: the
    tokenizer moved), else the path `magvit2 encode` recorded in tokens.json. Its config must hash as the recorded
    `model_config_sha256`; older folders (without the hash) record a path as typed, taken relative to the current
    directory, and their stored `model_config` is hashed instead. Raises FileNotFoundError when no tokenizer is
    found (the checkpoints hold it: training goes on only with it), ValueError when it is another one."""
    index = Path(directory) / INDEX_NAME
    if not index.is_file():
        raise FileNotFoundError(
            f"{index} not found: not a token folder written by `magvit2 encode` (images: add --tokenizer MODEL)"
        )
    meta = json.loads(index.read_text())
    source = tokenizer or meta.get("model")
    point = "point at the tokenizer that encoded them with --tokenizer PATH (or --set data.tokenizer=PATH)"
    if not source:
        raise FileNotFoundError(f"{index} records no tokenizer (field model): {point}")
    if not Path(source).exists():
        given = "data.tokenizer" if tokenizer else f"the tokenizer recorded in {index} (field model)"
        raise FileNotFoundError(f"{given} {source} not found (moved?): {point}")
    want = meta.get("model_config_sha256")
    if want is None and isinstance(meta.get("model_config"), dict):  # written before the hash existed
        want = config_sha256(meta["model_config"])
    tok = load_checkpoint(source)
    got = config_sha256(tok.config.to_dict())
    if want is not None and got != want:
        raise ValueError(
            f"tokenizer {source}: its config (sha256 {got[:12]}) is not the one that encoded {index} "
            f"(model_config_sha256 {want[:12]}): {point}"
        )
    return ar_tokenizer(tok, bits, name=str(source))


def ar_tokenizer(source, bits: tuple[int, int], *, name: str | None = None):
    """A tokenizer (directory or checkpoint, or one loaded from there: `name` its path) built with the AR token
    split, frozen."""
    tok = source if isinstance(source, torch.nn.Module) else load_checkpoint(source)
    # built again with the AR split rather than patched after construction
    config = dataclasses.replace(tok.config, factorized_bits=tuple(bits))
    return build_from_state(config, tok.state_dict(), str(name or source)).eval().requires_grad_(False)


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
    block_size = config.ar_config().block_size
    datamodule = ARDataModule(config.data, bits, seed=config.trainer.seed, block_size=block_size)
    if config.data.tokens is not None:
        tokenizer = tokenizer_of_shards(config.data.tokens, bits, config.data.tokenizer)
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
