"""`magvit2 demo tokenizer`: the `tiny` tokenizer trained on bundled photographs, scored before and after.

The photographs ship inside scikit-image (and scikit-learn); the tokenizer is evaluated on crops of held-out
photographs before and after training, and everything is written to one folder.

Output (demo-out/): reconstructions.png (held-out originals over reconstructions), curves.png (training losses and
held-out PSNR), codebook_usage.png, metrics.json (initial and final PSNR/SSIM/utilization, gain, timings), plus the
run itself (checkpoints/, logs/, images/, config.yaml).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from magvit2.demos.photos_data import PhotoDataModule
from magvit2.demos.plots import line_panels, read_metrics_csv
from magvit2.eval import evaluate_tokenizer, write_report
from magvit2.train.tokenizer.config import load_config
from magvit2.train.tokenizer.fit import fit_tokenizer

CURVES = ("train/l1", "train/total", "train/codebook_entropy", "train/d_loss", "train/g", "val/psnr")


class HeldOutEvaluation(Callback):
    """Evaluates the EMA tokenizer on the held-out crops when training starts and when it ends."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}

    def _evaluate(self, trainer, module) -> Any:
        loader = DataLoader(trainer.datamodule.val_set, batch_size=trainer.datamodule.config.val_batch_size)
        return evaluate_tokenizer(module.ema_tokenizer(), loader, device=module.device, progress=False)

    def on_train_start(self, trainer, module) -> None:
        self.results["initial"] = self._evaluate(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.results["final"] = self._evaluate(trainer, module)


def run_demo(
    out_dir: str | os.PathLike = "demo-out",
    *,
    steps: int | None = None,
    overrides: list[str] = (),
    threads: int | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train + evaluate the tiny tokenizer on the embedded photographs; returns the metrics written to JSON.
    threads: CPU threads (None: the config's trainer.threads, auto)."""
    out = Path(out_dir)
    for stale in ("checkpoints", "logs", "images", "report"):  # a fresh run every time
        if (out / stale).exists():
            shutil.rmtree(out / stale)
    extra = [f"trainer.max_steps={steps}"] if steps is not None else []
    config = load_config("tiny", [*overrides, *extra, *([f"trainer.threads={threads}"] if threads else [])])
    datamodule = PhotoDataModule(config.data, seed=config.trainer.seed)
    evaluation = HeldOutEvaluation()
    start = time.perf_counter()
    trainer, module = fit_tokenizer(config, out, datamodule=datamodule, progress=progress, callbacks=[evaluation])
    seconds = time.perf_counter() - start

    initial, final = evaluation.results["initial"], evaluation.results["final"]
    report_dir = out / "report"
    write_report(final, final.counts, report_dir)
    shutil.copy(report_dir / "codebook_usage.png", out / "codebook_usage.png")
    shutil.copy(out / "images" / "final.png", out / "reconstructions.png")  # the trainer's labelled contact sheet
    logs = sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    series = read_metrics_csv(logs[-1])
    line_panels({k: series[k] for k in CURVES if k in series}, out / "curves.png", smooth=10)
    metrics = {
        "initial": initial.to_dict(),
        "final": final.to_dict(),
        "psnr_gain_db": final.psnr - initial.psnr,
        "steps": module.batch_step,
        "train_seconds": round(seconds, 1),
        "train_images": module.batch_step * config.data.batch_size,
        "heldout_crops": len(datamodule.val_set),
        "config": config.to_dict(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def summary(metrics: dict[str, Any], out_dir: str | os.PathLike) -> str:
    i, f = metrics["initial"], metrics["final"]
    return (
        f"tiny tokenizer, {metrics['steps']} steps in {metrics['train_seconds']:.0f} s on "
        f"{metrics['config']['data']['size']}px crops; held-out ({metrics['heldout_crops']} crops of unseen photos):\n"
        f"  PSNR {i['psnr']:.2f} -> {f['psnr']:.2f} dB (+{metrics['psnr_gain_db']:.2f}), "
        f"SSIM {i['ssim']:.3f} -> {f['ssim']:.3f}, codebook utilization {f['utilization'] * 100:.2f}% "
        f"({f['used_codes']} of {f['codebook_size']} codes)\n"
        f"  wrote {out_dir}/reconstructions.png, curves.png, codebook_usage.png, metrics.json"
    )
