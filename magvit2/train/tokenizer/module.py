"""The tokenizer LightningModule: manual optimisation of generator then discriminator, EMA, lr drops.

State-dict keys are the official training checkpoint's: `encoder.*`, `decoder.*` (the tokenizer),
`loss.discriminator.main.*`, `loss.perceptual_loss.*` when LPIPS is on, `model_ema.<flat name>` (EMA of the
tokenizer weights) plus our `loss.lecam.ema_{real,fake}`; `magvit2 export` and `load_checkpoint` read
the files written here. The config travels in the checkpoint under "magvit2".

Steps: Lightning counts one step per optimizer.step(), two per batch here; `batch_step` is the number of training
batches done (what `trainer.max_steps`, `disc_start`, the lr schedule and the logs mean in our configs; the official
video recipe feeds Lightning's count to its cosine, which so ends at half the run: we follow its intent, per batch).

The video tokenizer (config kind "video-tokenizer") trains here too: a VideoTokenizer, the 3D PatchGAN, clips
(B, 3, T, H, W) in the batches, LPIPS over frames.
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import torch

from magvit2.eval.image_metrics import psnr as image_psnr
from magvit2.eval.image_metrics import quantize_uint8
from magvit2.nn.image.discriminator import PatchDiscriminator
from magvit2.nn.image.tokenizer import Tokenizer
from magvit2.nn.losses import TokenizerLoss, frames_as_images
from magvit2.nn.video.discriminator import PatchDiscriminator3D
from magvit2.nn.video.tokenizer import VideoTokenizer
from magvit2.train.common.ema import EMA
from magvit2.train.common.guard import NonFiniteGuard, check_finite_checkpoint, grad_scaler
from magvit2.train.common.resume_check import check_resume_checkpoint
from magvit2.train.tokenizer.config import TrainConfig, config_from_dict

OPTIMIZERS_PER_STEP = 2


class TokenizerModule(L.LightningModule):
    def __init__(self, config: TrainConfig | dict[str, Any]) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = config_from_dict(config)
        self.config = config
        tokenizer = (VideoTokenizer if config.video else Tokenizer)(config.tokenizer_config())
        # The tokenizer's modules are registered here directly so the keys are the official ones (no prefix);
        # the Tokenizer object itself is kept outside the module tree and shares them.
        self.encoder, self.decoder, self.quantize = tokenizer.encoder, tokenizer.decoder, tokenizer.quantizer
        self.__dict__["tokenizer"] = tokenizer
        disc = PatchDiscriminator3D if config.video else PatchDiscriminator
        discriminator = disc(ndf=config.loss.disc_ndf, n_layers=config.loss.disc_layers)
        self.loss = TokenizerLoss(config.loss, discriminator=discriminator)
        self.model_ema = EMA(tokenizer, decay=config.optim.ema_decay, warmup=config.optim.ema_warmup)
        self.automatic_optimization = False
        self.guard = NonFiniteGuard(config.trainer.max_nonfinite_skips)

    def on_fit_start(self) -> None:
        """A fresh video run with init.inflate_from: the image checkpoint's raw weights inflated into the model, its
        EMA weights (or the raw ones when it has none) into the EMA. After a resume's restore, so a resumed run keeps
        its own weights."""
        path = self.config.init.inflate_from
        if path is None or self.trainer.ckpt_path is not None:
            return
        from magvit2.checkpoints.image import load_official
        from magvit2.checkpoints.video import inflate_from_checkpoint
        from magvit2.nn.video.tokenizer import inflate_state_dict

        inflate_from_checkpoint(self.tokenizer, path, use_ema=False)
        own = dict(self.tokenizer.named_parameters())
        loaded = None if os.path.isdir(path) else load_official(path, use_ema=True)
        if loaded is not None and loaded.source == "ema":
            self.model_ema.load_shadows(inflate_state_dict(loaded.state_dict, own))
        else:  # no EMA in the file (or our format): the EMA starts from the inflated weights
            self.model_ema.load_shadows(own)

    @property
    def batch_step(self) -> int:
        return self.global_step // OPTIMIZERS_PER_STEP

    def forward(self, x: torch.Tensor):
        return self.tokenizer(x)

    def configure_optimizers(self):
        o = self.config.optim
        opt_g = torch.optim.Adam(self.tokenizer.parameters(), lr=o.lr, betas=o.betas)
        opt_d = torch.optim.Adam(self.loss.discriminator.parameters(), lr=o.lr, betas=o.betas)
        return [opt_g, opt_d]

    def lr_at_epoch(self, epoch: int) -> float:
        """Base lr times lr_drop_factor per drop epoch passed. Derived from the epoch (restored on resume), not from
        a scheduler stepped at epoch end, which a checkpoint taken at an epoch's last batch would miss."""
        o = self.config.optim
        return o.lr * o.lr_drop_factor ** sum(1 for e in o.lr_drop_epochs if epoch >= e)

    def lr_at_step(self, step: int) -> float:
        """The cosine schedule at batch `step` (the official video recipe's "cos"): linear from warmup_start * lr to
        lr over warmup_steps, then lr * (r + (1 - r) (1 + cos(pi p)) / 2), p = (step - warmup) / (max_steps - 1 -
        warmup) in [0, 1], r = final_lr_ratio."""
        o, total = self.config.optim, self.config.trainer.max_steps
        if step < o.warmup_steps:
            return o.lr * (o.warmup_start + (1 - o.warmup_start) * step / o.warmup_steps)
        p = min(1.0, (step - o.warmup_steps) / max(1, total - 1 - o.warmup_steps))
        return o.lr * (o.final_lr_ratio + (1 - o.final_lr_ratio) * (0.5 + 0.5 * math.cos(math.pi * p)))

    def _set_lr(self) -> float:
        cosine = self.config.optim.schedule == "cosine"
        lr = self.lr_at_step(self.batch_step) if cosine else self.lr_at_epoch(self.current_epoch)
        for opt in self.optimizers():
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch  # (B, 3, H, W) or (B, 3, T, H, W) in [-1, 1]
        opt_g, opt_d = self.optimizers()
        step = self.batch_step
        lr = self._set_lr()

        # both losses first (D sees the detached reconstruction, so its value does not depend on the G update):
        # a non-finite one skips both updates, the EMA, and the state the loss forward moved (LeCAM EMAs and the
        # discriminator's BatchNorm statistics, a few KB: restored from this copy)
        loss_state = [b.detach().clone() for b in self.loss.buffers()]
        self.toggle_optimizer(opt_g)  # generator: encoder + LFQ + decoder, D frozen (no D gradients from this loss)
        rec, lfq = self.tokenizer(x)
        g = self.loss.generator_loss(x, rec, lfq, self.quantize, step=step, last_layer=self.decoder.conv_out.weight)
        self.untoggle_optimizer(opt_g)
        self.toggle_optimizer(opt_d)  # discriminator on real images and detached reconstructions
        d = self.loss.discriminator_loss(x, rec.detach(), step=step)
        self.untoggle_optimizer(opt_d)
        if self.guard.skip(self, g.loss, d.loss, step=step):
            self._skip_update(loss_state, x.shape[0])
            return

        # Without a GradScaler both backwards run first and a non-finite gradient skips both steps (as a non-finite
        # loss does). Under fp16's GradScaler each step follows its own backward: the scaler skips a step with
        # inf gradients itself and update() changes the scale, which a second backward must not precede.
        scaler = grad_scaler(self)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g.loss)
        if scaler is not None:
            opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        if d.loss.requires_grad:
            self.manual_backward(d.loss)
        if scaler is None:
            if self.guard.skip_grads(self, self.parameters(), step=step):
                opt_g.zero_grad(set_to_none=True)
                opt_d.zero_grad(set_to_none=True)
                self._skip_update(loss_state, x.shape[0])
                return
            opt_g.step()
        if scaler is not None and not d.loss.requires_grad:
            # before loss.disc_start D has no gradients, and GradScaler.step refuses an optimizer it saw none of
            # ("No inf checks were recorded"): step it past the scaler (Adam skips parameters without gradients),
            # still through Lightning, which counts the step (two per batch: batch_step)
            plugin = self.trainer.precision_plugin
            plugin.scaler = None
            try:
                opt_d.step()
            finally:
                plugin.scaler = scaler
        else:
            opt_d.step()
        # EMA here, not in on_train_batch_end: checkpoint callbacks run before that hook and would miss this update
        self.model_ema.update(self.tokenizer)

        logs = {f"train/{k}": v for k, v in {**g.logs, **d.logs}.items()}
        logs["train/lr"] = torch.tensor(lr)
        logs["train/nonfinite_skips"] = torch.tensor(float(self.guard.total))
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=x.shape[0])
        self.log("loss", g.logs["total"], prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0])
        # batches done after this step: names the step checkpoints (Lightning's own step counts both optimizers)
        self.log("batches", float(step + 1), on_step=True, on_epoch=False, logger=False, batch_size=x.shape[0])

    def _skip_update(self, loss_state: list[torch.Tensor], batch_size: int) -> None:
        """No update this batch: restore the state the loss forward moved (LeCAM EMAs, D BatchNorm statistics)."""
        with torch.no_grad():
            for buffer, saved in zip(self.loss.buffers(), loss_state, strict=True):
                buffer.copy_(saved)
        self.log("train/nonfinite_skips", float(self.guard.total), on_step=True, batch_size=batch_size)

    # --- validation with the EMA weights ----------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._ema_context = self.model_ema.swapped_in(self.tokenizer)
        self._ema_context.__enter__()

    def on_validation_epoch_end(self) -> None:
        self._ema_context.__exit__(None, None, None)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        quantized, _ = self.tokenizer.encode(x)
        rec = self.tokenizer.decode(quantized)
        # the evaluation's PSNR (over frames for clips); capped at 200 dB so an exact reconstruction logs a finite
        # number
        frames, rec_frames = frames_as_images(x), frames_as_images(rec)
        psnr = image_psnr(quantize_uint8(frames), quantize_uint8(rec_frames)).clamp(max=200.0).mean()
        self.log("val/psnr", psnr, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        self.log("val/l1", (x - rec.clamp(-1, 1)).abs().mean(), on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    # --- checkpoints ------------------------------------------------------------------------------------------------

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_resume_checkpoint(checkpoint, self, self.config.kind, self._trainer.ckpt_path if self._trainer else "")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_finite_checkpoint(checkpoint, self.batch_step)
        meta = {"kind": self.config.kind, "config": self.config.to_dict(), "batch_step": self.batch_step}
        checkpoint["magvit2"] = meta

    def ema_tokenizer(self) -> Tokenizer:
        """A copy of the tokenizer holding the EMA weights, in eval mode (for evaluation and export)."""
        import copy

        model = copy.deepcopy(self.tokenizer)
        self.model_ema.copy_to(model)
        return model.eval()
