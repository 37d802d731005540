"""Encode and decode image files with a tokenizer, behind `magvit2 reconstruct`: side-by-side PNGs and per-image PSNR
(computed as the official evaluation: uint8 levels rescaled to [0, 1], reconstructions clamped first)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from magvit2.data.images import list_images, load_image, to_uint8
from magvit2.eval.image_metrics import psnr, quantize_uint8


class ReconstructionResult(NamedTuple):
    source: str
    output: str  # side-by-side PNG: original | reconstruction
    height: int
    width: int
    grid: tuple[int, int]  # token grid (h, w)
    psnr: float


@torch.inference_mode()
def reconstruct_files(
    model,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[ReconstructionResult]:
    """Encode and decode each image (one at a time: sizes may differ); write `<stem>.png` side by side. `paths`:
    image files, or folders searched recursively. `out_dir` must be new or empty (nothing is overwritten)."""
    from PIL import Image
    from tqdm.auto import tqdm

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output folder {out} is not empty; choose a new one")
    files = [f for p in paths for f in (list_images(p) if Path(p).is_dir() else [Path(p)])]
    out.mkdir(parents=True, exist_ok=True)
    f = model.downsample_factor
    results, used = [], set()
    for path in tqdm(files, unit="img", desc="reconstruct", disable=not progress):
        x = load_image(path, size=size, multiple_of=f).to(device)
        quantized, indices = model.encode(x[None])
        rec = model.decode(quantized)[0]
        original, restored = to_uint8(x), to_uint8(rec)
        score = float(psnr(quantize_uint8(x[None]), quantize_uint8(rec[None]))[0])
        name = Path(path).stem
        while name in used:  # same stem from different folders: keep every output
            name += "_"
        used.add(name)
        target = out / f"{name}.png"
        Image.fromarray(np.concatenate([original, restored], axis=1)).save(target)
        grid = tuple((indices[0] if isinstance(indices, tuple) else indices).shape[-2:])
        h, w = original.shape[:2]
        results.append(ReconstructionResult(str(path), str(target), h, w, grid, score))
    return results
