"""The AR LightningModule (reference §4.4): next-sub-token cross-entropy over tokens, AdamW (0.9, 0.95) with
weight decay on matrices, the official warm-up / plateau / linear-decay schedule per step, grad clip 1.0, DDP as the
tokenizer trainer.

Tokens come from shards written by `magvit2 encode` (`data.tokens`), or on the fly (`data.images` +
`data.tokenizer`): the frozen tokenizer encodes each batch of random crops under no_grad, as the official trainer
does. Shards cost one pass over the data once; on the fly costs an encoder forward per batch (on a CPU about as
much as the AR step itself) but sees a new crop every epoch.

Checkpoints hold `transformer.*` and the frozen tokenizer under `first_stage_model.*` (when one is known): the
official AR layout, so `magvit2 export` and `magvit2 sample` read them directly. Under "magvit2" they also hold the
run config and `class_names`, the data's class names in id order (the only ids the model was trained on).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from magvit2.nn.ar.transformer import ARTransformer
from magvit2.train.ar.config import ARTrainConfig
from magvit2.train.common.guard import NonFiniteGuard, check_finite_checkpoint
from magvit2.train.common.resume_check import check_resume_checkpoint


def lr_factor(it: int, *, max_it: int, warmup_it: int, wp0: float = 0.005, wpe: float = 0.1) -> float:
    """Official schedule (VAR's lr_wd_annealing): linear warm-up from wp0, flat until 5% of the rest, then linear
    decay to wpe at the last step."""
    if it < warmup_it:
        return wp0 + (1 - wp0) * it / warmup_it
    pasd = (it - warmup_it) / max(max_it - 1 - warmup_it, 1)
    if pasd < 0.05:
        return 1.0
    return wpe + (1 - wpe) * (1 - pasd) / 0.95


class ARModule(L.LightningModule):
    """Keys: `transformer.*` (+ frozen `first_stage_model.*` when a tokenizer is given): the official AR layout.
    `class_names`: the data's classes in id order, saved with every checkpoint."""

    def __init__(
        self, config: ARTrainConfig, tokenizer: torch.nn.Module | None = None, *, class_names: list[str] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.transformer = ARTransformer(config.ar_config())
        num = self.transformer.config.class_num
        if class_names is not None and len(class_names) > num:  # else id class_num would train the null class
            raise ValueError(
                f"the data has {len(class_names)} classes (folders) but model.class_num is {num}: "
                f"set model.class_num={len(class_names)} or more"
            )
        self.class_names = None if class_names is None else list(class_names)
        self.guard = NonFiniteGuard(config.trainer.max_nonfinite_skips)
        self._loss_skipped = False
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
        self._loss_skipped = self.guard.skip(self, loss, step=self.global_step)
        if self._loss_skipped:  # returning None: Lightning makes no update
            self.log("train/nonfinite_skips", float(self.guard.total), on_step=True, batch_size=pre.shape[0])
            return None
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=pre.shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=pre.shape[0])
        self.log("train/nonfinite_skips", float(self.guard.total), on_step=True, batch_size=pre.shape[0])
        self.log("batches", float(self.global_step + 1), on_step=True, logger=False, batch_size=pre.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # after backward, before grad clipping (which would turn an inf gradient into NaN) and the step: a finite
        # loss with a non-finite gradient skips the update (no gradients: AdamW leaves every parameter and its state)
        if self._loss_skipped:
            return
        params = [p for p in self.transformer.parameters() if p.requires_grad]
        if self.guard.skip_grads(self, params, step=self.global_step):
            optimizer.zero_grad(set_to_none=True)  # (counted in train/nonfinite_skips from the next batch's log)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Before every update after the first (not once at the end of step 1: a checkpoint taken at step 1 is saved
        # before a module's batch-end hook runs, and a run resumed from it would never decay the norms).
        if self.config.optim.decay_norms and self.global_step >= 1:
            for group in self.optimizers().param_groups:
                group["weight_decay"] = self.config.optim.weight_decay

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_resume_checkpoint(checkpoint, self, "ar", self._trainer.ckpt_path if self._trainer else "")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_finite_checkpoint(checkpoint, self.global_step)
        checkpoint["magvit2"] = {"kind": "ar", "config": self.config.to_dict(), "class_names": self.class_names}
