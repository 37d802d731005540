"""Build the Lightning Trainer for a tokenizer run and fit it: logs, checkpoints, reconstruction grids, DDP.

Output folder layout: `checkpoints/` (step-NNNNNN.ckpt, last.ckpt), `logs/version_N/` (CSV, and TensorBoard when
installed; a resumed run writes the next N), `images/` (reconstruction grids of validation images with the EMA
weights), `config.yaml` (the resolved config).
Multi-node: run the same command on every node with MASTER_ADDR, MASTER_PORT and NODE_RANK set (or under torchrun);
Lightning reads them. More than one process uses DDP (gloo on CPU, NCCL on GPU, HCCL on NPU).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from magvit2.data.images import to_uint8
from magvit2.train.config import TrainConfig
from magvit2.train.module import OPTIMIZERS_PER_STEP, TokenizerModule
from magvit2.train.resumable import DataPosition, RngState


def image_grid(rows: list[torch.Tensor]) -> np.ndarray:
    """Rows of image batches (B, 3, H, W) in [-1, 1] -> one (rows*H, B*W, 3) uint8 picture."""
    return np.concatenate([np.concatenate(list(to_uint8(r)), axis=1) for r in rows], axis=0)


class ReconstructionGrid(Callback):
    """Every `every_n_steps` training steps (and at the end), save originals over EMA reconstructions as a PNG."""

    def __init__(self, out_dir: str | os.PathLike, *, every_n_steps: int, count: int = 8) -> None:
        self.out_dir, self.every, self.count = Path(out_dir), every_n_steps, count
        self.images: torch.Tensor | None = None

    def _pick(self, trainer: L.Trainer) -> torch.Tensor | None:
        if self.images is None:
            dm = trainer.datamodule
            dataset = getattr(dm, "val_set", None) or getattr(dm, "train_set", None)
            if dataset is None or len(dataset) == 0:
                return None
            self.images = torch.stack([dataset[i] for i in range(min(self.count, len(dataset)))])
        return self.images

    def save(self, trainer: L.Trainer, module: TokenizerModule, name: str) -> Path | None:
        images = self._pick(trainer)
        if images is None or not trainer.is_global_zero:
            return None
        from PIL import Image

        model = module.ema_tokenizer()
        with torch.inference_mode():
            x = images.to(module.device)
            rec = model.decode(model.encode(x)[0])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / name
        Image.fromarray(image_grid([x, rec])).save(path)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = pl_module.batch_step
        if self.every > 0 and step % self.every == 0:
            self.save(trainer, pl_module, f"step-{step:06d}.png")

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer, pl_module, "final.png")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same folder, fsynced, then renamed over the target: a killed
    or failing write leaves the previous file whole (never a truncated .ckpt). ModelCheckpoint writes
    step-N.ckpt before last.ckpt, so last.ckpt only moves once a complete step checkpoint exists. Reading (resume)
    goes through the weights-only loader: a checkpoint whose pickle would run code is refused, whatever torch's
    default."""

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        from magvit2.nn.checkpoint import safe_torch_load

        if weights_only is False:
            raise ValueError("AtomicCheckpointIO loads weights-only: weights_only=False is refused")
        return safe_torch_load(path)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes the final state when the run ends between two checkpoint steps (Lightning
    writes last.ckpt at the end only if it never wrote one), so a finished run's last.ckpt is its last step."""

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step > self._last_global_step_saved:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)


def _uses_npu(name: str) -> bool:
    return name == "npu" or (name == "auto" and importlib.util.find_spec("torch_npu") is not None)


def next_log_version(folder: Path) -> int:
    versions = [int(p.name[8:]) for p in folder.glob("version_*") if p.name[8:].isdigit()]
    return max(versions, default=-1) + 1


def build_trainer(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    callbacks: list[Callback] = (),
    progress: bool = True,
    strategy: Any = None,
    steps_per_batch: int = OPTIMIZERS_PER_STEP,
    grid: bool = True,
    gradient_clip_val: float | None = None,
) -> L.Trainer:
    """steps_per_batch: optimizer steps Lightning counts per training batch (2 for the tokenizer's G and D)."""
    t = config.trainer
    out = Path(out_dir)
    version = next_log_version(out / "logs")  # both loggers write logs/version_N (a resumed run: the next N)
    loggers: list[Any] = [L.pytorch.loggers.CSVLogger(out, name="logs", version=version)]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(L.pytorch.loggers.TensorBoardLogger(out, name="logs", version=version, default_hp_metric=False))
    checkpoints = StepCheckpoint(
        dirpath=out / "checkpoints",
        filename="step-{batches:06.0f}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps * steps_per_batch,
        save_top_k=-1,
        save_last=True,
    )
    grids = (
        [ReconstructionGrid(out / "images", every_n_steps=t.image_every_n_steps, count=t.grid_images)] if grid else []
    )
    devices, nodes = t.devices, t.num_nodes
    many = nodes > 1 or (isinstance(devices, int) and devices > 1) or os.environ.get("WORLD_SIZE", "1") != "1"
    accelerator, plugins, backend = t.accelerator, [], None
    if _uses_npu(t.accelerator):
        from magvit2.train.npu import NPUAccelerator, npu_plugins

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
    import warnings

    warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Total length of .list. across ranks is zero.*")  # no val folder
    bars = [TQDMProgressBar(refresh_rate=10)] if progress else []
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
        callbacks=[checkpoints, DataPosition(), RngState(), *grids, *bars, *callbacks],
        use_distributed_sampler=False,  # ResumableLoader shards by rank itself, in a resumable order
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=False,
    )


def resolve_resume(resume: str | None, out_dir: str | os.PathLike) -> str | None:
    """--resume PATH, or 'auto': <out>/checkpoints/last.ckpt when it exists (a fresh run otherwise)."""
    if resume is None:
        return None
    if resume == "auto":
        last = Path(out_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    return resume


def fit_tokenizer(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    datamodule: L.LightningDataModule | None = None,
    resume: str | None = None,
    progress: bool = True,
    callbacks: list[Callback] = (),
    strategy: Any = None,
) -> tuple[L.Trainer, TokenizerModule]:
    """Train (or resume) a tokenizer; returns the trainer and the module (EMA weights via `module.ema_tokenizer()`)."""
    import yaml

    from magvit2.train.data import ImageDataModule

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    datamodule = datamodule or ImageDataModule(config.data, seed=config.trainer.seed)
    module = TokenizerModule(config)
    trainer = build_trainer(config, out, callbacks=list(callbacks), progress=progress, strategy=strategy)
    if trainer.is_global_zero:
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_resume(resume, out))
    return trainer, module
