"""Class-conditional sampling to files: a PNG contact sheet (one labelled row per class) or an `.npz` in the ADM
evaluator layout (uint8 NHWC `arr_0`, labels `arr_1`), behind `magvit2 sample`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magvit2.data.images import contact_sheet, to_uint8
from magvit2.data.tokens import pack_groups
from magvit2.nn.ar.generation import generate


@torch.inference_mode()
def sample_images(
    transformer,
    tokenizer,
    classes: list[int],
    *,
    per_class: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    **settings: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate `per_class` images for each class: (N, H, W, 3) uint8 and (N,) int64 labels, class-major order.
    Batch j draws from seed stream (seed, j) so every batch gets its own tokens. `settings`: see generate()."""
    from tqdm import tqdm

    for name, value in (("per_class", per_class), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"sample_images: {name} must be a positive integer, got {value!r}")
    if not classes:
        raise ValueError("sample_images: classes must name at least one class, got none")
    labels = torch.tensor([c for c in classes for _ in range(per_class)], dtype=torch.long)
    side = transformer.config.grid_size
    bits = transformer.config.factorized_bits
    if tokenizer.config.factorized_bits is not None and tuple(tokenizer.config.factorized_bits) != tuple(bits):
        raise ValueError(f"tokenizer splits tokens {tokenizer.config.factorized_bits}, transformer expects {bits}")
    device = next(transformer.parameters()).device
    images = []
    batches = list(torch.split(labels, batch_size))
    for j, batch in enumerate(tqdm(batches, desc="sample", unit="batch", disable=not progress)):
        tokens = generate(transformer, batch.to(device), seed=seed * 1_000_003 + j, **settings)
        groups = (tokens.pre.view(-1, side, side), tokens.post.view(-1, side, side))
        indices = groups if tokenizer.config.factorized_bits is not None else pack_groups(groups, bits)
        images.append(to_uint8(tokenizer.decode_indices(indices)))
    return np.concatenate(images), labels.numpy()


SAMPLE_SUFFIXES = (".npz", ".png", ".jpg", ".jpeg")


def check_samples_path(out: str | os.PathLike) -> Path:
    """The output path of `write_samples`, checked before any sampling: .npz, .png or .jpg."""
    out = Path(out)
    if out.suffix.lower() not in SAMPLE_SUFFIXES:
        raise ValueError(f"--out must end in .npz, .png or .jpg, got {out.name}")
    return out


def write_samples(
    images: np.ndarray,
    labels: np.ndarray,
    out: str | os.PathLike,
    *,
    per_row: int | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """`.npz` -> arr_0 (N, H, W, 3) uint8 + arr_1 labels; `.png`/`.jpg` -> a contact sheet, `per_row` images per
    row (tiles enlarged to >= 64 px). A row of one class is labelled with its name in `class_names` (id order), else
    with its id."""
    out = check_samples_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npz":
        np.savez(out, images, labels)
        return out
    from PIL import Image

    per_row = per_row or len(images)
    rows = [labels[i : i + per_row] for i in range(0, len(labels), per_row)]
    row_labels = None
    if all((row == row[0]).all() for row in rows):  # one class per row (class-major order)
        row_labels = [class_label(int(row[0]), class_names) for row in rows]
    Image.fromarray(contact_sheet(images, per_row, row_labels=row_labels)).save(out)
    return out


def class_label(class_id: int, class_names: list[str] | None) -> str:
    """The name of a class id when the model stores its class names, else the id."""
    return class_names[class_id] if class_names is not None and class_id < len(class_names) else str(class_id)
