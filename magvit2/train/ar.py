"""AR training on Lightning (reference §4.4): next-sub-token cross-entropy over tokens, AdamW (0.9, 0.95) with
weight decay on matrices, the official warm-up / plateau / linear-decay schedule per step, grad clip 1.0, DDP as the
tokenizer trainer.

Tokens come from shards written by `magvit2 encode` (`data.tokens`), or on the fly (`data.images` +
`data.tokenizer`): the frozen tokenizer encodes each batch of random crops under no_grad, as the official trainer
does. Shards cost one pass over the data once; on the fly costs an encoder forward per batch (on a CPU about as
much as the AR step itself) but sees a new crop every epoch.

Checkpoints hold `transformer.*` and the frozen tokenizer under `first_stage_model.*` (when one is known): the
official AR layout, so `magvit2 convert` and `magvit2 sample` read them directly.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from magvit2.nn.transformer import AR_PRESETS, ARConfig, ARTransformer
from magvit2.train.config import (
    TrainerConfig,
    _build,
    _plain,
    check_model_section,
    check_sections,
    read_config_values,
)
from magvit2.train.guard import NonFiniteGuard
from magvit2.train.resumable import ResumableLoader


@dataclasses.dataclass
class AROptimConfig:
    lr: float = 3e-4  # peak
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05  # on parameters with >= 2 dims
    decay_norms: bool = False  # official quirk: after step 0 the norms (and every other group) get weight decay too
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # used when warmup_epochs is 0
    wp0: float = 0.005  # lr factor at step 0
    wpe: float = 0.1  # lr factor at the end
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optim.weight_decay and optim.grad_clip must be >= 0")


@dataclasses.dataclass
class ARDataConfig:
    tokens: str | None = None  # folder written by `magvit2 encode` (factorized or full indices)
    images: str | None = None  # or an image folder (class = parent folder), tokenized on the fly by ...
    tokenizer: str | None = None  # ... this frozen tokenizer (our directory or a training/official checkpoint)
    size: int = 256  # on the fly: shorter side resized to size, random size x size crop (official)
    batch_size: int = 24
    num_workers: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"data.batch_size must be a positive int, got {self.batch_size!r}")
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"data.size must be a positive int, got {self.size!r}")

    def check_source(self) -> None:
        """Exactly one source: token shards, or images with the tokenizer that encodes them."""
        if self.tokens is not None and self.images is not None:
            raise ValueError("data.tokens and data.images are both set: give token shards or images, not both")
        if self.tokens is None and self.images is None:
            raise ValueError(
                "data.tokens is not set: pass --data TOKENS (a folder written by magvit2 encode), or --data IMAGES "
                "with --tokenizer MODEL to tokenize on the fly"
            )
        if self.images is not None and self.tokenizer is None:
            raise ValueError(f"data.images={self.images}: tokens on the fly need data.tokenizer (--tokenizer MODEL)")


@dataclasses.dataclass
class ARTrainConfig:
    model: dict[str, Any]
    optim: AROptimConfig
    data: ARDataConfig
    trainer: TrainerConfig
    name: str = "ar"

    def ar_config(self) -> ARConfig:
        fields = dict(self.model)
        preset = fields.pop("preset", None)
        base = AR_PRESETS[preset] if preset else ARConfig()
        return dataclasses.replace(base, **fields)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def load_ar_config(source: str | os.PathLike, overrides: list[str] = ()) -> ARTrainConfig:
    """An AR config: YAML file or preset (open-magvit2-ar-B/L/XL, ar-tiny), then `section.key=value` overrides."""
    values = read_config_values(source, overrides, kind="ar")
    check_sections(values, ["optim", "data", "trainer"])
    model = check_model_section(values.get("model") or {}, ARConfig, AR_PRESETS)
    config = ARTrainConfig(
        model=model,
        optim=_build(AROptimConfig, values.get("optim") or {}, "optim"),
        data=_build(ARDataConfig, values.get("data") or {}, "data"),
        trainer=_build(TrainerConfig, values.get("trainer") or {}, "trainer"),
        name=values.get("name", "ar"),
    )
    config.ar_config()
    return config


def lr_factor(it: int, *, max_it: int, warmup_it: int, wp0: float = 0.005, wpe: float = 0.1) -> float:
    """Official schedule (VAR's lr_wd_annealing): linear warm-up from wp0, flat until 5% of the rest, then linear
    decay to wpe at the last step."""
    if it < warmup_it:
        return wp0 + (1 - wp0) * it / warmup_it
    pasd = (it - warmup_it) / max(max_it - 1 - warmup_it, 1)
    if pasd < 0.05:
        return 1.0
    return wpe + (1 - wpe) * (1 - pasd) / 0.95


class TokenLabels(Dataset):
    """(pre (T,), post (T,), class id) from token shards; classes = sorted parent-folder names of the sources."""

    def __init__(self, directory: str | os.PathLike, bits: tuple[int, int]) -> None:
        from magvit2.data.images import folder_labels
        from magvit2.data.tokens import TokenShards

        self.shards, self.bits = TokenShards(directory), bits
        self.class_names, self.labels = folder_labels(self.shards.sources)
        self.tokens = self.shards.load_all().flatten(1)  # (N, T) full indices
        if len(self.tokens) == 0:
            raise ValueError(f"{directory}: no tokens")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.tokens[i]
        return t & ((1 << self.bits[0]) - 1), t >> self.bits[0], self.labels[i]


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
            from magvit2.data.images import list_images, usable_images
            from magvit2.train.data import LabeledCropFolder

            files = usable_images(list_images(self.config.images))
            self.train_set = LabeledCropFolder(files, size=self.config.size, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        c = self.config
        return ResumableLoader(
            self.train_set, batch_size=c.batch_size, shuffle=True, drop_last=True, seed=self.seed,
            num_workers=c.num_workers, persistent_workers=c.num_workers > 0,
        )  # fmt: skip


class ARModule(L.LightningModule):
    """Keys: `transformer.*` (+ frozen `first_stage_model.*` when a tokenizer is given): the official AR layout."""

    def __init__(self, config: ARTrainConfig, tokenizer: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.transformer = ARTransformer(config.ar_config())
        self.guard = NonFiniteGuard(config.trainer.max_nonfinite_skips)
        if tokenizer is not None:
            self.first_stage_model = tokenizer.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> ARModule:
        super().train(mode)
        if hasattr(self, "first_stage_model"):  # frozen: stays in eval mode while the transformer trains
            self.first_stage_model.eval()
        return self

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> pre, post (B, T) sub-token ids from the frozen tokenizer."""
        if not hasattr(self, "first_stage_model"):
            raise ValueError("ARModule: image batches need a tokenizer (data.tokenizer) to tokenize them")
        pre, post = self.first_stage_model.encode(images).indices  # (B, h, w) each, the AR split
        if pre[0].numel() != self.transformer.config.block_size:
            raise ValueError(
                f"data.size: images of {images.shape[-2]}x{images.shape[-1]} give {pre.shape[1]}x{pre.shape[2]} "
                f"tokens, the model's block_size is {self.transformer.config.block_size}"
            )
        return pre.flatten(1), post.flatten(1)

    def configure_optimizers(self):
        o = self.config.optim
        params = [p for p in self.transformer.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)
        max_it = max(int(self.trainer.estimated_stepping_batches), 1)
        # batches per epoch and rank from the data itself (drop_last), not max_it // max_epochs, which is wrong
        # when the run is bounded by max_steps
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_set", None)
        world = getattr(self.trainer, "world_size", 1)
        per_epoch = len(dataset) // (self.config.data.batch_size * world) if dataset is not None else 0
        warmup = int(o.warmup_epochs * per_epoch) if o.warmup_epochs and per_epoch else o.warmup_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda it: lr_factor(it, max_it=max_it, warmup_it=warmup, wp0=o.wp0, wpe=o.wpe)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if len(batch) == 2:  # images: tokens on the fly
            images, cls = batch
            pre, post = self.tokenize(images)
        else:
            pre, post, cls = batch
        loss = self.transformer.loss(pre, post, cls)
        if self.guard.skip(self, loss, step=self.global_step):  # returning None: Lightning makes no update
            self.log("train/nonfinite_skips", float(self.guard.total), on_step=True, batch_size=pre.shape[0])
            return None
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=pre.shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=pre.shape[0])
        self.log("train/nonfinite_skips", float(self.guard.total), on_step=True, batch_size=pre.shape[0])
        self.log("batches", float(self.global_step + 1), on_step=True, logger=False, batch_size=pre.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.config.optim.decay_norms and self.global_step == 1:
            for group in self.optimizers().param_groups:
                group["weight_decay"] = self.config.optim.weight_decay

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["magvit2"] = {"kind": "ar", "config": self.config.to_dict()}


def tokenizer_of_shards(directory: str | os.PathLike, bits: tuple[int, int]):
    """The tokenizer directory that `magvit2 encode` recorded for these shards, with the AR token split, or None."""
    import json

    from magvit2.data.tokens import INDEX_NAME

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
    from magvit2.nn import load_checkpoint
    from magvit2.nn.checkpoint import build_from_state

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
    from magvit2.train.run import build_trainer, resolve_resume

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    bits = config.ar_config().factorized_bits
    datamodule = ARDataModule(config.data, bits, seed=config.trainer.seed)
    if config.data.tokens is not None:
        tokenizer = tokenizer_of_shards(config.data.tokens, bits)
    else:
        tokenizer = ar_tokenizer(config.data.tokenizer, bits)
    module = ARModule(config, tokenizer)
    trainer = build_trainer(
        config,
        out,
        callbacks=list(callbacks),
        progress=progress,
        steps_per_batch=1,
        grid=False,
        gradient_clip_val=config.optim.grad_clip or None,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_resume(resume, out))
    return trainer, module
