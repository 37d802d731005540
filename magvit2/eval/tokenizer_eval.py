"""Reconstruction metrics of a tokenizer over a stream of image batches, as the official evaluation computes them.

Official recipe (reference/open-magvit2.md §3.6): reconstructions `decode(encode(x))` clamped to [-1, 1]; PSNR / SSIM
on uint8-quantised images rescaled to [0, 1]; LPIPS on [-1, 1] inputs, averaged over images; rFID between pytorch-fid
pool3 features of the originals and of the reconstructions; utilisation = distinct indices / 2^18.
One difference: the official script averages PSNR / SSIM per batch and then over batches; we average over images,
which is the same number when every batch is full and does not depend on the batch size when the last one is not.

Example (needs a model folder, image files and the Inception weights, so not run as a doctest):

    model = Tokenizer.from_pretrained("ckpt/").eval()
    loader = DataLoader(ImageFiles(files, size=256, multiple_of=16), batch_size=8, collate_fn=ImageFiles.collate)
    batches = ReadableBatches(loader)  # (images, ids) of the files that decode; the others in batches.skipped
    metrics = evaluate_tokenizer(model, batches, inception=InceptionV3FID.from_file(path), device="cuda")
    write_report(metrics, metrics.counts, "eval_out/")
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from magvit2.data.tokens import pack_groups
from magvit2.eval.codebook import CodebookCounter, save_usage_histogram
from magvit2.eval.fid import FeatureStats, frechet_distance
from magvit2.eval.image_metrics import psnr, quantize_uint8, ssim

LpipsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class TokenizerMetrics:
    """Means over `num_images` images; lpips / rfid are None when not computed. `num_skipped` image files could not
    be read (`evaluate_folder`) and are in no mean; `skipped` names them ("<path>: <why>"). `counts` (int64
    (codebook_size,), the per-code histogram for `write_report`) and `skipped` are not part of `to_dict`."""

    psnr: float
    ssim: float
    lpips: float | None
    rfid: float | None
    utilization: float
    used_codes: int
    codebook_size: int
    perplexity: float
    num_images: int
    num_skipped: int = 0
    counts: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)
    skipped: list[str] = dataclasses.field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, float | int | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("counts", "skipped")}


def _images_of(batch, device: torch.device) -> torch.Tensor:
    """A batch is (B, 3, H, W) in [-1, 1], or a DataLoader tuple/list whose first item is."""
    images = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        desc = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            "evaluate_tokenizer: each batch must be float images (B, 3, H, W) in [-1, 1] or an (images, ...) "
            f"tuple, got {desc}"
        )
    return images.to(device)


def _lpips_per_image(lpips: LpipsFn, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    d = lpips(x, rec)
    if not isinstance(d, torch.Tensor) or d.numel() != x.shape[0]:
        desc = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
        raise ValueError(
            f"evaluate_tokenizer: lpips(x, rec) must give one value per image (B,) or (B,1,1,1), got {desc}"
        )
    return d.detach().reshape(-1).double()


@torch.inference_mode()
def evaluate_tokenizer(
    model: nn.Module,
    batches: Iterable,
    *,
    inception: nn.Module | None = None,
    lpips: LpipsFn | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    max_batches: int | None = None,
) -> TokenizerMetrics:
    """Stream `batches` through `model` and return the official reconstruction metrics.

    model: a `Tokenizer` (anything with `encode(x) -> (quantized, indices)`, `decode(quantized)` and
        `config.z_channels` / `config.factorized_bits`); moved to `device` and run in eval mode (restored after).
    batches: iterable of (B, 3, H, W) images in [-1, 1], or of (images, ...) tuples as a DataLoader yields.
    inception: e.g. `InceptionV3FID.from_file(...)`, (B, 3, H, W) in [-1, 1] -> (B, D) features; enables rFID.
    lpips: callable (x, rec) -> (B,) or (B, 1, 1, 1) distances, both inputs in [-1, 1] (e.g. `lpips.LPIPS(net=...)`).
    max_batches: stop after this many batches (None: all).
    """
    device = torch.device(device)
    codebook_size = 2 ** int(model.config.z_channels)
    factorized_bits = getattr(model.config, "factorized_bits", None)
    counter = CodebookCounter(codebook_size)
    real, fake = FeatureStats(), FeatureStats()
    psnr_sum = ssim_sum = lpips_sum = 0.0
    num_images = 0

    modules = [m for m in (model, inception, lpips) if isinstance(m, nn.Module)]
    was_training = [m.training for m in modules]
    for m in modules:
        m.to(device).eval()
    try:
        total = len(batches)  # DataLoaders and lists know it; generators do not
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
        batches = itertools.islice(batches, max_batches)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        batches = bar = tqdm(batches, total=total, desc="evaluate", unit="batch")
    try:
        for batch in batches:
            x = _images_of(batch, device)
            quantized, indices = model.encode(x)
            rec = model.decode(quantized).clamp(-1, 1)
            counter.update(pack_groups(indices, factorized_bits))

            qx, qr = quantize_uint8(x), quantize_uint8(rec)
            psnr_sum += float(psnr(qx, qr).sum())
            ssim_sum += float(ssim(qx, qr).sum())
            if lpips is not None:
                lpips_sum += float(_lpips_per_image(lpips, x, rec).sum())
            if inception is not None:
                real.update(inception(x))
                fake.update(inception(rec))
            num_images += x.shape[0]
            if bar is not None:
                bar.set_postfix(psnr=f"{psnr_sum / num_images:.2f}", used=counter.used)
    finally:
        if bar is not None:
            bar.close()
        for m, mode in zip(modules, was_training, strict=True):
            m.train(mode)

    if num_images == 0:
        raise ValueError("evaluate_tokenizer: `batches` gave no images")
    rfid = None
    if inception is not None:
        if num_images < 2:
            raise ValueError(f"evaluate_tokenizer: rFID needs at least 2 images (a covariance), got {num_images}")
        rfid = frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance)
    return TokenizerMetrics(
        psnr=psnr_sum / num_images,
        ssim=ssim_sum / num_images,
        lpips=lpips_sum / num_images if lpips is not None else None,
        rfid=rfid,
        utilization=counter.utilization,
        used_codes=counter.used,
        codebook_size=codebook_size,
        perplexity=counter.perplexity,
        num_images=num_images,
        counts=counter.counts.cpu(),
    )


def write_report(metrics: TokenizerMetrics, counts: torch.Tensor, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `metrics.json` (the `to_dict` fields) and `codebook_usage.png` (see `save_usage_histogram`) under
    `out_dir` (created). Returns {"metrics": path, "codebook_usage": path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    values = metrics.to_dict()
    # identical reconstructions give PSNR = inf, which strict JSON cannot hold: write null and say why
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
    non_finite = sorted(k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v))
    if non_finite:
        clean["non_finite"] = {k: str(values[k]) for k in non_finite}
    paths = {"metrics": out / "metrics.json", "codebook_usage": out / "codebook_usage.png"}
    with open(paths["metrics"], "w") as f:
        json.dump(clean, f, indent=2, allow_nan=False)
        f.write("\n")
    save_usage_histogram(counts, paths["codebook_usage"])
    return paths


def evaluate_folder(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    size: int | None = 256,
    batch_size: int = 8,
    limit: int | None = None,
    inception: str | os.PathLike | None = None,
    lpips_backbone: str | os.PathLike | None = None,
    lpips_heads: str | os.PathLike = "auto",
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TokenizerMetrics:
    """`evaluate_tokenizer` over the images under `folder` (the first `limit` files, official preprocessing at
    `size`); rFID with the pytorch-fid Inception weights file `inception`, LPIPS with a VGG16 weights file
    `lpips_backbone`. Files that cannot be read (a bad header, truncated data) are skipped: the metrics are over
    the readable images only, `num_skipped` counts the others and `skipped` names them."""
    from torch.utils.data import DataLoader

    from magvit2.data.datasets import ImageFiles, ReadableBatches
    from magvit2.data.images import list_images, scan_images
    from magvit2.eval.inception import InceptionV3FID

    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive int or None (all images), got {limit!r}")  # -1 would drop one
    files, bad_headers = scan_images(list_images(folder)[:limit])
    if not files:
        raise ValueError(f"none of the {len(bad_headers)} image files can be read: {bad_headers[0]}")
    dataset = ImageFiles(files, size=size, multiple_of=model.downsample_factor)
    batches = ReadableBatches(
        DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=ImageFiles.collate)
    )
    net = InceptionV3FID.from_file(inception).to(device).eval() if inception else None
    lpips = None
    if lpips_backbone:
        from magvit2.nn.lpips import LPIPS

        lpips = LPIPS(backbone=lpips_backbone, heads=lpips_heads).to(device).eval()
    try:
        metrics = evaluate_tokenizer(model, batches, inception=net, lpips=lpips, device=device, progress=progress)
    except ValueError as e:
        if "gave no images" not in str(e):
            raise
        raise ValueError(f"none of the {len(files) + len(bad_headers)} image files can be read: "
                         f"{(bad_headers + batches.skipped)[0]}") from None  # fmt: skip
    skipped = sorted(bad_headers + batches.skipped, key=lambda reason: reason.split(": ")[0])  # path order
    return dataclasses.replace(metrics, num_skipped=len(skipped), skipped=skipped)
