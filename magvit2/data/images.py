"""Image files <-> tensors in [-1, 1], the official preprocessing, PSNR, and side-by-side reconstructions.

Preprocessing follows the official evaluation (reference/open-magvit2.md §3.5-3.6): resize the shorter side to
`size` (PIL bilinear) and center-crop `size` x `size`; pixels scale as x / 127.5 - 1. PSNR is computed as the official
script does: on uint8-quantised images rescaled to [0, 1], reconstructions clamped to [-1, 1] first.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
MAX_PIXELS = 178_956_970  # larger images are skipped, not decoded (PIL's own bomb limit; 537 MB as RGB)
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


class UnreadableImage(ValueError):
    """A file that cannot be used as an image (empty, not an image, truncated, too large); datasets skip it."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (recursive), sorted by relative path so runs are reproducible."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return files


def _open_checked(path: Path):
    """The lazily opened PIL image (header read, pixels not decoded), or UnreadableImage saying why."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            raise UnreadableImage(f"{path}: empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
            im = Image.open(path)
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path}: not an image file PIL can read") from None
    except Image.DecompressionBombError:
        raise UnreadableImage(f"{path}: larger than {MAX_PIXELS} pixels") from None
    except OSError as e:
        raise UnreadableImage(f"{path}: {type(e).__name__}: {e}") from None
    if im.width * im.height > MAX_PIXELS:
        im.close()
        raise UnreadableImage(f"{path}: {im.width}x{im.height} is larger than {MAX_PIXELS} pixels")
    return im


def open_rgb(path: str | os.PathLike):
    """Decode an image file to an RGB PIL image, or raise UnreadableImage saying why.

    Grayscale, palette, CMYK and alpha images are converted as PIL's convert("RGB") does (alpha dropped, as the
    official data pipeline). 16-bit and 32-bit integer images are scaled by 255 / 65535 and float images by 255
    (convert("RGB") would clip them to white).
    """
    from PIL import Image

    with _open_checked(Path(path)) as im:
        try:
            if im.mode in WIDE_MODES:
                wide = np.asarray(im, dtype=np.float64)
                scale = 255.0 / WIDE_MODES[im.mode] if im.mode != "I" or wide.max() > 255 else 1.0
                gray = np.clip(np.round(wide * scale), 0, 255).astype(np.uint8)
                return Image.fromarray(np.repeat(gray[..., None], 3, axis=2))
            return im.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
            raise UnreadableImage(f"{path}: {type(e).__name__}: {e}") from None


def usable_images(paths: Sequence[str | os.PathLike], *, show: int = 5) -> list[Path]:
    """The paths whose header opens as an image of at most MAX_PIXELS; the rest are dropped with ONE warning giving
    their count and the first `show` with the reason. Only headers are read (about 0.1 ms a file): a file that
    fails later, when decoded (truncated data), is replaced by the next readable one (see `load_or_next`).
    Raises ValueError when no path is usable."""
    good, bad = [], []
    for path in map(Path, paths):
        try:
            _open_checked(path).close()
            good.append(path)
        except UnreadableImage as e:
            bad.append(str(e))
    if bad:
        first = "; ".join(bad[:show]) + ("; ..." if len(bad) > show else "")
        warnings.warn(f"skipped {len(bad)} of {len(paths)} image files that cannot be read: {first}", stacklevel=2)
    if not good:
        raise ValueError(f"none of the {len(bad)} image files can be read: {first}")
    return good


def load_or_next(paths: Sequence[Path], i: int, load):
    """(load(paths[j]), j) for the first j = i, i+1, ... (cyclically) whose file decodes: a file that fails only
    when decoded costs one warning, never the DataLoader worker or the batch size."""
    for k in range(len(paths)):
        j = (i + k) % len(paths)
        try:
            return load(paths[j]), j
        except UnreadableImage as e:
            warnings.warn(f"skipped an image that failed to decode: {e}", stacklevel=2)
    raise UnreadableImage(f"none of the {len(paths)} images can be decoded")


def folder_labels(paths: Sequence[str | os.PathLike]) -> tuple[list[str], torch.Tensor]:
    """Class names (sorted parent-folder names, as in the ImageNet layout) and the (N,) class id of each path."""
    folders = [Path(p).parent.name for p in paths]
    names = sorted(set(folders))
    ids = {name: i for i, name in enumerate(names)}
    return names, torch.tensor([ids[f] for f in folders], dtype=torch.long)


def _center_crop(img, width: int, height: int):
    left = int(round((img.width - width) / 2.0))
    top = int(round((img.height - height) / 2.0))
    return img.crop((left, top, left + width, top + height))


def load_image(path: str | os.PathLike, *, size: int | None = None, multiple_of: int = 1) -> torch.Tensor:
    """Read an image as (3, H, W) float32 in [-1, 1] (grayscale, palette and alpha images become RGB).

    size: resize the shorter side to `size` and center-crop size x size (must be a multiple of `multiple_of`);
    None keeps the native size, center-cropped down to multiples of `multiple_of`.
    """
    from PIL import Image

    try:
        img = open_rgb(path)
    except UnreadableImage as e:
        raise UnreadableImage(f"cannot read image {e}") from None
    if size is not None:
        if size < multiple_of or size % multiple_of:
            raise ValueError(f"size {size} must be a positive multiple of the downsampling factor {multiple_of}")
        w, h = img.width, img.height  # torchvision Resize(size): shorter side -> size, longer side truncated
        new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        img = _center_crop(img.resize(new, Image.BILINEAR), size, size)
    else:
        w, h = img.width // multiple_of * multiple_of, img.height // multiple_of * multiple_of
        if w == 0 or h == 0:
            raise ValueError(f"image {path} ({img.width}x{img.height}) is smaller than the factor {multiple_of}")
        img = _center_crop(img, w, h)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())  # (H, W, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] (clamped) -> (..., H, W, 3) uint8: one image or a batch."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images on the [0, 1] scale (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


class ImageFiles(torch.utils.data.Dataset):
    """Map-style dataset of preprocessed images: item i = ((3, H, W) tensor, i). For DataLoader workers."""

    def __init__(self, paths: Sequence[str | os.PathLike], *, size: int | None, multiple_of: int) -> None:
        self.paths, self.size, self.multiple_of = [Path(p) for p in paths], size, multiple_of

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_or_next(self.paths, i, lambda p: load_image(p, size=self.size, multiple_of=self.multiple_of))


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
) -> list[ReconstructionResult]:
    """Encode and decode each image (one at a time: sizes may differ); write `<stem>.png` side by side."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f = model.downsample_factor
    results, used = [], set()
    for path in paths:
        x = load_image(path, size=size, multiple_of=f).to(device)
        quantized, indices = model.encode(x[None])
        rec = model.decode(quantized)[0]
        original, restored = to_uint8(x), to_uint8(rec)
        name = Path(path).stem
        while name in used:  # same stem from different folders: keep every output
            name += "_"
        used.add(name)
        target = out / f"{name}.png"
        Image.fromarray(np.concatenate([original, restored], axis=1)).save(target)
        grid = tuple((indices[0] if isinstance(indices, tuple) else indices).shape[-2:])
        h, w = original.shape[:2]
        results.append(ReconstructionResult(str(path), str(target), h, w, grid, psnr_uint8(original, restored)))
    return results
