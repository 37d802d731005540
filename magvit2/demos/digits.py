"""`magvit2 demo` (the main job): class-conditional generation end to end on scikit-learn's handwritten digits.

Pipeline, all in one process, nothing downloaded:
1. data: the 8 x 8 digits upscaled to 16 x 16, split 1,437 train / 360 held out (stratified, fixed seed);
2. tokenizer: the `digits` config (tiny architecture, 4x downsampling -> 4 x 4 = 16 tokens per image, 10-bit LFQ,
   L1 + LFQ losses) trained with the tokenizer trainer; its EMA weights are saved as `tokenizer/`;
3. tokens: every digit encoded in-process and written as the token shards `magvit2 encode` writes (class = digit);
4. AR model: the `ar-digits` config (the tiny transformer, 5 + 5 bit sub-tokens, 16 positions, 10 classes) trained
   with the AR trainer on the training digits' tokens;
5. sampling: `per_class` digits per class with classifier-free guidance (default cfg 3.0, temperature 0.8), decoded
   by the tokenizer;
6. scoring: an RBF-SVM on pixels trained on the real training digits labels every sample; the class-consistency
   accuracy is the share labelled as the class it was generated for (chance: 10%). For context the same classifier
   is scored on the real held-out digits and on the tokenizer's reconstructions of them.

Threads: `auto` (the default) runs these models, all under 5M parameters, on one thread (magvit2/ops/threads.py
says why); one thread also makes a run bit-reproducible: the same seed gives the same samples.

Output (demo-out/): samples.png (one row per class), reconstructions.png (held-out digits over their
reconstructions), curves.png (tokenizer and AR losses, held-out PSNR), metrics.json (accuracies, per-class accuracy,
confusion matrix, timings per phase, steps, settings), and the runs: tokenizer-run/, tokenizer/, tokens/, ar-run/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magvit2.data.images import contact_sheet, to_uint8
from magvit2.data.tokens import unpack_groups
from magvit2.demos.digits_data import (
    NUM_CLASSES,
    DigitClassifier,
    DigitsDataModule,
    class_report,
    encode_digits,
    load_digits,
    split_digits,
    write_digit_tokens,
)
from magvit2.demos.plots import line_panels, read_metrics_csv
from magvit2.eval.image_metrics import psnr, quantize_uint8
from magvit2.ops.threads import parse_threads, using_threads
from magvit2.pipelines.sample import sample_images, write_samples
from magvit2.train.ar.config import load_ar_config
from magvit2.train.ar.fit import fit_ar
from magvit2.train.tokenizer.config import load_config
from magvit2.train.tokenizer.fit import fit_tokenizer

TOKENIZER_CURVES = ("train/l1", "train/codebook_entropy", "val/psnr")
RUN_FOLDERS = ("tokenizer-run", "tokenizer", "tokens", "ar-run")


@dataclasses.dataclass
class SampleSettings:
    per_class: int = 20
    cfg: float = 3.0  # guidance scale of both sub-tokens
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def _save_png(picture: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(picture).save(path)


def _last_log(run: Path) -> dict[str, tuple[list[float], list[float]]]:
    """The series of a run's latest metrics.csv; none when the run was too short to log a step."""
    logs = sorted((run / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    return read_metrics_csv(logs[-1]) if logs else {}


def _curves(out: Path) -> None:
    tok, ar = _last_log(out / "tokenizer-run"), _last_log(out / "ar-run")
    panels = {f"tokenizer {k}": tok[k] for k in TOKENIZER_CURVES if k in tok}
    if "train/loss" in ar:
        panels["AR train/loss (CE pre + post)"] = ar["train/loss"]
    line_panels(panels, out / "curves.png", columns=2, smooth=5)


def run_digits_demo(
    out_dir: str | os.PathLike = "demo-out",
    *,
    tokenizer_steps: int | None = None,
    ar_steps: int | None = None,
    tokenizer_overrides: list[str] = (),
    ar_overrides: list[str] = (),
    sampling: SampleSettings | None = None,
    threads: int | str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole pipeline; returns the metrics written to `<out_dir>/metrics.json`."""
    sampling = sampling or SampleSettings()
    parse_threads(threads)
    if sampling.per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {sampling.per_class}")
    out = Path(out_dir)
    for stale in RUN_FOLDERS:  # a fresh run every time
        if (out / stale).exists():
            shutil.rmtree(out / stale)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    start = clock

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    extra = [f"trainer.max_steps={tokenizer_steps}"] if tokenizer_steps is not None else []
    tok_config = load_config("digits", [*tokenizer_overrides, *extra, f"trainer.threads={threads}"])
    extra = [f"trainer.max_steps={ar_steps}"] if ar_steps is not None else []
    ar_config = load_ar_config("ar-digits", [*ar_overrides, *extra, f"trainer.threads={threads}"])
    size = tok_config.data.size
    split = split_digits(load_digits(size), seed=tok_config.trainer.seed)
    classifier = DigitClassifier(seed=tok_config.trainer.seed).fit(split.train)
    real_accuracy = classifier.accuracy(split.heldout.images, split.heldout.labels)
    lap("data_and_classifier")

    datamodule = DigitsDataModule(tok_config.data, split)
    _, tok_module = fit_tokenizer(tok_config, out / "tokenizer-run", datamodule=datamodule, progress=progress)
    tokenizer = tok_module.ema_tokenizer()
    tokenizer.save_pretrained(out / "tokenizer")
    lap("tokenizer_training")

    bits = ar_config.ar_config().factorized_bits
    with torch.inference_mode(), using_threads(threads, tokenizer):
        train_tokens = encode_digits(tokenizer, split.train.images)
        heldout_tokens = encode_digits(tokenizer, split.heldout.images)
        recon = torch.cat([tokenizer.decode_indices(t) for t in heldout_tokens.split(256)])
    write_digit_tokens(
        train_tokens, split.train.labels, out / "tokens", tokenizer=tokenizer, model_source=str(out / "tokenizer")
    )
    heldout_u8, recon_u8 = to_uint8(split.heldout.images), to_uint8(recon)
    recon_psnr = _psnr(split.heldout.images, recon)
    recon_accuracy = classifier.accuracy(recon, split.heldout.labels)
    lap("encode")

    ar_config.data.tokens = str(out / "tokens")
    _, ar_module = fit_ar(ar_config, out / "ar-run", progress=progress)
    transformer = ar_module.transformer.eval()
    class_names = ar_module.class_names  # "0" ... "9": the shards' folder names
    ar_tokenizer = ar_module.first_stage_model  # the same weights, with the AR's (pre, post) split
    with using_threads(threads, transformer):
        heldout_loss = _ar_loss(transformer, heldout_tokens, split.heldout.labels, bits)
    lap("ar_training")

    classes = list(range(NUM_CLASSES))
    with using_threads(threads, transformer, ar_tokenizer) as sampling_threads:
        images, labels = sample_images(
            transformer,
            ar_tokenizer,
            classes,
            per_class=sampling.per_class,
            batch_size=NUM_CLASSES * sampling.per_class,
            seed=sampling.seed,
            progress=False,
            cfg=sampling.cfg,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
        )
    lap("sampling")

    report = class_report(classifier.predict(images), labels)
    # as `magvit2 sample` writes them: one row per digit, labelled with the class name the shards stored
    write_samples(images, labels, out / "samples.npz")
    write_samples(images, labels, out / "samples.png", per_row=sampling.per_class, class_names=class_names)
    shown = np.concatenate([np.flatnonzero(split.heldout.labels.numpy() == c)[:2] for c in classes])
    pairs = np.concatenate([heldout_u8[shown], recon_u8[shown]])
    sheet = contact_sheet(pairs, len(shown), row_labels=("held-out", "reconstruction"))
    _save_png(sheet, out / "reconstructions.png")
    _curves(out)
    lap("scoring_and_plots")
    timings["total"] = round(time.perf_counter() - start, 2)

    used = int(torch.unique(train_tokens).numel())
    metrics = {
        "class_consistency_accuracy": report["accuracy"],
        "per_class_accuracy": report["per_class_accuracy"],
        "confusion": report["confusion"],
        "chance": 1 / NUM_CLASSES,
        "classifier": {
            "model": f"RBF SVM (C=10) on {size}x{size} pixels, trained on the real training digits",
            "real_heldout_accuracy": real_accuracy,
            "reconstruction_heldout_accuracy": recon_accuracy,
        },
        "tokenizer": {
            "steps": tok_module.batch_step,
            "heldout_psnr": recon_psnr,
            "codes_used_by_training_digits": used,
            "codebook_size": tokenizer.config.codebook_size,
            "token_grid": list(train_tokens.shape[1:]),
        },
        "ar": {
            "steps": int(ar_module.global_step),
            "heldout_loss": heldout_loss,
            "parameters": sum(p.numel() for p in transformer.parameters()),
        },
        "sampling": {**dataclasses.asdict(sampling), "classes": NUM_CLASSES, "samples": int(len(labels))},
        "digits": {"image_size": size, "train": len(split.train.labels), "heldout": len(split.heldout.labels)},
        "timings_s": timings,
        "threads": sampling_threads,
        "configs": {"tokenizer": tok_config.to_dict(), "ar": ar_config.to_dict()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) on uint8 levels, the official evaluation's; an exact image counts as 200 dB."""
    return float(psnr(quantize_uint8(images), quantize_uint8(reconstructions)).clamp(max=200.0).mean())


@torch.inference_mode()
def _ar_loss(transformer, tokens: torch.Tensor, labels: torch.Tensor, bits: tuple[int, int]) -> float:
    """Teacher-forced CE(pre) + CE(post) on held-out digits' tokens (the training objective, no dropout)."""
    pre, post = unpack_groups(tokens.flatten(1), bits)  # (N, h * w) each
    return float(transformer.loss(pre, post, labels))


def summary(metrics: dict[str, Any], out_dir: str | os.PathLike) -> str:
    t, c, s = metrics["timings_s"], metrics["classifier"], metrics["sampling"]
    per_class = " ".join(f"{a * 100:.0f}" for a in metrics["per_class_accuracy"])
    return (
        f"digits: tokenizer {metrics['tokenizer']['steps']} steps ({t['tokenizer_training']:.0f} s), "
        f"AR {metrics['ar']['steps']} steps ({t['ar_training']:.0f} s), "
        f"{s['samples']} samples (cfg {s['cfg']}, temperature {s['temperature']}), total {t['total']:.0f} s\n"
        f"  class-consistency accuracy {metrics['class_consistency_accuracy'] * 100:.1f}% (chance 10%); "
        f"per class 0-9: {per_class}\n"
        f"  classifier on held-out real digits {c['real_heldout_accuracy'] * 100:.1f}%, on their reconstructions "
        f"{c['reconstruction_heldout_accuracy'] * 100:.1f}% (PSNR {metrics['tokenizer']['heldout_psnr']:.1f} dB)\n"
        f"  wrote {out_dir}/samples.png, reconstructions.png, curves.png, metrics.json"
    )
