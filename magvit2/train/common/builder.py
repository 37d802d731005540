"""The Lightning Trainer every trainer runs on: loggers, checkpoints, resumable data order, DDP, precision plugins.

Output folder layout: `checkpoints/` (step-NNNNNN.ckpt, last.ckpt), `logs/version_N/` (CSV, and TensorBoard when
installed; a resumed run writes the next N), `run.lock` while a run trains there (run_folder.py), plus what the
trainer's callbacks write.
Multi-node: run the same command on every node with MASTER_ADDR, MASTER_PORT and NODE_RANK set (or under torchrun);
Lightning reads them. More than one process uses DDP (gloo on CPU, NCCL on GPU, HCCL on NPU).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from magvit2.ops.threads import resolve_threads
from magvit2.train.common.io import AtomicCheckpointIO
from magvit2.train.common.progress import StepProgress, quiet_lightning
from magvit2.train.common.resume import DataPosition, RngState
from magvit2.train.common.run_folder import StopSignals, TrainingInterrupted


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes the final state when the run ends between two checkpoint steps (Lightning
    writes last.ckpt at the end only if it never wrote one), so a finished run's last.ckpt is its last step.
    Our names are overwritten (atomically), never versioned (`last-v1.ckpt` would leave `--resume auto` on a stale
    last.ckpt). With `signals` (run_folder.StopSignals): a SIGTERM / SIGINT received during training stops every
    process at the end of the same step (the flag is max-reduced across processes each step), after writing
    last.ckpt at that step: the state a regular checkpoint of that step holds; then TrainingInterrupted."""

    def __init__(
        self, *, resuming: bool = False, signals: StopSignals | None = None, steps_per_batch: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(enable_version_counter=False, **kwargs)
        self.resuming, self.signals, self.steps_per_batch = resuming, signals, steps_per_batch

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath) -> None:
        # Lightning warns about a non-empty checkpoint folder: a resumed run writes beside its own checkpoints
        if not self.resuming:
            super()._ModelCheckpoint__warn_if_dir_not_empty(dirpath)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        if trainer.is_global_zero:  # said once the file loaded whole (a damaged one stops with its own line)
            step = checkpoint["global_step"] // self.steps_per_batch
            print(f"resuming from {trainer.ckpt_path} (step {step})", file=sys.stderr, flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if self.signals is not None:
            self.signals.defer()  # after Lightning installed its SIGTERM handler: ours again

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.signals is None:
            return
        signum = self.signals.received
        if trainer.world_size > 1:  # every process stops at the same step (rank 0 writes the checkpoint)
            flag = torch.tensor(float(signum), device=pl_module.device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max"))
        if not signum:
            return
        if trainer.global_step > self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        raise TrainingInterrupted(signum, self.last_model_path, trainer.global_step // self.steps_per_batch)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step > self._last_global_step_saved:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)


class CpuThreads(Callback):
    """Sets each process's torch CPU threads from trainer.threads once the module is known (auto: by its size, the
    CPUs shared among the processes of this node; magvit2/ops/threads.py), and restores the count afterwards."""

    def __init__(self, threads: int | str) -> None:
        self.threads, self.previous = threads, None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.previous = torch.get_num_threads()
        torch.set_num_threads(resolve_threads(self.threads, pl_module, processes=trainer.num_devices))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.previous is not None:
            torch.set_num_threads(self.previous)
            self.previous = None


def _uses_npu(name: str) -> bool:
    return name == "npu" or (name == "auto" and importlib.util.find_spec("torch_npu") is not None)


def next_log_version(folder: Path) -> int:
    versions = [int(p.name[8:]) for p in folder.glob("version_*") if p.name[8:].isdigit()]
    return max(versions, default=-1) + 1


def build_trainer(
    config: Any,
    out_dir: str | os.PathLike,
    *,
    callbacks: list[Callback] = (),
    progress: bool = True,
    strategy: Any = None,
    steps_per_batch: int = 1,
    gradient_clip_val: float | None = None,
    what: str = "training",
    resuming: bool = False,
    signals: StopSignals | None = None,
) -> L.Trainer:
    """The Lightning Trainer of a run: loggers, step checkpoints (atomic, weights-only on resume), the resumable data
    position and RNG states, DDP when more than one process, NPU and CPU fp16 precision plugins, and the trainer's
    own `callbacks`. steps_per_batch: optimizer steps Lightning counts per training batch (2 for the tokenizer's G
    and D updates). Prints one progress bar in training steps (`what` names the run), none of Lightning's chatter.
    resuming: the run continues from a checkpoint in out_dir (no warning that its checkpoint folder is not empty).
    signals: the run's StopSignals (run_folder.run_folder): SIGTERM / SIGINT save last.ckpt and stop the run."""
    t = config.trainer
    out = Path(out_dir)
    version = next_log_version(out / "logs")  # both loggers write logs/version_N (a resumed run: the next N)
    loggers: list[Any] = [L.pytorch.loggers.CSVLogger(out, name="logs", version=version)]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(L.pytorch.loggers.TensorBoardLogger(out, name="logs", version=version, default_hp_metric=False))
    checkpoints = StepCheckpoint(
        resuming=resuming,
        signals=signals,
        steps_per_batch=steps_per_batch,
        dirpath=out / "checkpoints",
        filename="step-{batches:06.0f}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps * steps_per_batch,
        save_top_k=-1,
        save_last=True,
    )
    devices, nodes = t.devices, t.num_nodes
    many = nodes > 1 or (isinstance(devices, int) and devices > 1) or os.environ.get("WORLD_SIZE", "1") != "1"
    accelerator, plugins, backend = t.accelerator, [], None
    if _uses_npu(t.accelerator):
        from magvit2.train.common.npu import NPUAccelerator, npu_plugins

        if not NPUAccelerator.is_available():
            NPUAccelerator.auto_device_count()  # raises with the reason (torch_npu / CANN missing)
        accelerator, plugins, backend = NPUAccelerator(), npu_plugins(t.precision), "hccl"
    npu = bool(plugins)
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available() and not npu)
    if on_cpu and t.precision == "16-mixed":
        # Lightning would quietly run bf16 here; fp16 autocast with a real GradScaler is what GPU runs use, so the
        # same overflow handling (skipped steps, shrinking scale) runs and is testable on a CPU
        from lightning.pytorch.plugins.precision import MixedPrecision

        plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
    if strategy is None and many:
        from lightning.pytorch.strategies import DDPStrategy

        # D-step backwards leave the tokenizer unused and vice versa: the official run uses the same flag.
        strategy = DDPStrategy(find_unused_parameters=True, process_group_backend=backend)
    quiet_lightning()
    bars = [StepProgress(steps_per_batch=steps_per_batch, what=what)] if progress else []
    return L.Trainer(
        default_root_dir=out,
        accelerator=accelerator,
        plugins=[*plugins, AtomicCheckpointIO()],
        devices=devices,
        num_nodes=nodes,
        strategy=strategy or "auto",
        precision=None if plugins else t.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps * steps_per_batch if t.max_steps > 0 else -1,
        gradient_clip_val=gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=None if t.val_every_n_steps else t.val_every_n_epochs,
        val_check_interval=t.val_every_n_steps,
        num_sanity_val_steps=0,
        logger=loggers,
        callbacks=[checkpoints, DataPosition(), RngState(), CpuThreads(t.threads), *bars, *callbacks],
        use_distributed_sampler=False,  # ResumableLoader shards by rank itself, in a resumable order
        enable_progress_bar=False,  # StepProgress instead
        enable_model_summary=False,
        deterministic=False,
    )
