"""Image files <-> tensors in [-1, 1]: finding and opening files, the one rule for resize / crop / to-tensor, uint8
conversion and contact sheets (pictures of many images people can judge).

Preprocessing follows the official data pipeline (reference/open-magvit2.md §3.5-3.6): resize the shorter side to
`size` (PIL bilinear), then crop `size` x `size` (center for evaluation, random for training); pixels scale as
x / 127.5 - 1. Back to pixels as the official sampler (sample.py) and evaluation (evaluation_image.py) convert:
255 * ((x + 1) / 2) in float32, clipped to [0, 255] and truncated (not rounded) to uint8 (`uint8_levels`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
MAX_PIXELS = 178_956_970  # larger images are skipped, not decoded (PIL's own bomb limit; 537 MB as RGB)
# Longer / shorter side above this: skipped. Resizing the shorter side to `size` scales the longer one by the same
# factor, so a 4 KB 1 x 2,000,000 PNG would become 256 x 512,000,000 pixels (393 GB as RGB); at 64 a 256 crop's
# resize stays under 12.6 MB. Panoramas (about 10:1) pass.
MAX_ASPECT = 64
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


class UnreadableImage(ValueError):
    """A file that cannot be used as an image (empty, not an image, truncated, too large); datasets skip it."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (recursive), sorted by relative path so runs are reproducible. A sub-folder that
    cannot be listed (permission denied) is an error naming it: skipping it would drop a class and shift the class
    ids of every later folder."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")

    def refuse(e: OSError) -> None:
        raise ValueError(f"cannot list the folder {e.filename} under {root}: {e.strerror or e}; fix or remove it")

    files = sorted(
        Path(top, name)
        for top, _, names in os.walk(root, onerror=refuse)  # symlinked folders are not entered (as rglob)
        for name in names
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS and Path(top, name).is_file()
    )
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return files


def _open_checked(path: Path):
    """The lazily opened PIL image (header read, pixels not decoded), or UnreadableImage saying why. Any exception
    while reading the header is the file's fault (PIL raises ValueError, SyntaxError, struct.error, OSError,
    DecompressionBombError, ... on hostile headers: a huge text chunk, a bad PPM maxval), so all of them are."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            raise UnreadableImage(f"{path}: empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # we apply our own size limit; PIL's warnings on corrupt metadata
            im = Image.open(path)
            width, height = im.size
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path}: not an image file PIL can read") from None
    except Image.DecompressionBombError:
        raise UnreadableImage(f"{path}: larger than {MAX_PIXELS} pixels") from None
    except Exception as e:  # any: see the docstring
        raise UnreadableImage(f"{path}: {type(e).__name__}: {e}") from None
    if width * height > MAX_PIXELS:
        im.close()
        raise UnreadableImage(f"{path}: {width}x{height} is larger than {MAX_PIXELS} pixels")
    if max(width, height) > MAX_ASPECT * max(min(width, height), 1):
        im.close()
        raise UnreadableImage(f"{path}: {width}x{height} has an aspect ratio above {MAX_ASPECT}:1")
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
        except Exception as e:  # truncated or corrupt data, whatever PIL raises for it
            raise UnreadableImage(f"{path}: {type(e).__name__}: {e}") from None


def scan_images(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """(the paths whose header opens as an image of at most MAX_PIXELS and aspect ratio MAX_ASPECT, the reasons
    "<path>: <why>" of the others). Only headers are read (about 0.1 ms a file)."""
    good, bad = [], []
    for path in map(Path, paths):
        try:
            _open_checked(path).close()
            good.append(path)
        except UnreadableImage as e:
            bad.append(str(e))
    return good, bad


def first_reasons(reasons: Sequence[str], show: int = 5) -> str:
    """The first `show` reasons joined by "; ", and "; ..." when there are more (for one-line skip messages)."""
    return "; ".join(reasons[:show]) + ("; ..." if len(reasons) > show else "")


def skipped_summary(count: int, skipped: Sequence[str], *, show: int = 5) -> str:
    """ "N images, M skipped (unreadable): <the first `show` reasons>" (or "N images" when none was skipped)."""
    if not skipped:
        return f"{count} images"
    return f"{count} images, {len(skipped)} skipped (unreadable): {first_reasons(skipped, show)}"


def usable_images(paths: Sequence[str | os.PathLike], *, show: int = 5) -> list[Path]:
    """The paths `scan_images` keeps; the rest are dropped with ONE warning giving their count and the first `show`
    with the reason. A file that fails later, when decoded (truncated data), is replaced by the next readable one in
    training (see `load_or_next`), skipped and counted in encoding and evaluation (`ImageFiles`).
    Raises ValueError when no path is usable."""
    good, bad = scan_images(paths)
    first = first_reasons(bad, show)
    if bad:
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


def folder_class(path: str | os.PathLike) -> str:
    """The class of an image file: its parent folder's name (the ImageNet layout)."""
    return Path(path).parent.name


def folder_labels(
    paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None
) -> tuple[list[str], torch.Tensor]:
    """Class names and the (N,) class id of each path (its `folder_class`): the position of its class in `names`,
    by default the sorted folder names (so ids 0, 1, ... in name order)."""
    folders = [folder_class(p) for p in paths]
    names = sorted(set(folders)) if names is None else list(names)
    ids = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(folders) - set(ids))
    if unknown:
        raise ValueError(f"folders {unknown[:5]} are not among the {len(names)} class names {names[:5]}...")
    return names, torch.tensor([ids[f] for f in folders], dtype=torch.long)


def resize_shorter(img, size: int):
    """A PIL image resized (bilinear) so that its shorter side is `size`; the longer side is truncated, as
    torchvision's Resize(size) in the official data pipeline."""
    from PIL import Image

    w, h = img.width, img.height
    new = (size, max(size, int(size * h / w))) if w <= h else (max(size, int(size * w / h)), size)
    return img.resize(new, Image.BILINEAR)


def center_crop(img, width: int, height: int):
    left = int(round((img.width - width) / 2.0))
    top = int(round((img.height - height) / 2.0))
    return img.crop((left, top, left + width, top + height))


def to_tensor(pixels) -> torch.Tensor:
    """(H, W, 3) uint8 pixels (an array or a PIL image) -> (3, H, W) float32 in [-1, 1]: pixel / 127.5 - 1, computed
    in float64 and rounded to float32 as the official data pipeline's `(image / 127.5 - 1.0).astype(np.float32)` (in
    float32 arithmetic 128 of the 256 levels land one float32 step away)."""
    pixels = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    return (pixels.double() / 127.5 - 1.0).float()


def load_image(path: str | os.PathLike, *, size: int | None = None, multiple_of: int = 1) -> torch.Tensor:
    """Read an image as (3, H, W) float32 in [-1, 1] (grayscale, palette and alpha images become RGB).

    size: resize the shorter side to `size` and center-crop size x size (must be a multiple of `multiple_of`);
    None keeps the native size, center-cropped down to multiples of `multiple_of`.
    """
    try:
        img = open_rgb(path)
    except UnreadableImage as e:
        raise UnreadableImage(f"cannot read image {e}") from None
    if size is not None:
        if size < multiple_of or size % multiple_of:
            raise ValueError(f"size {size} must be a positive multiple of the downsampling factor {multiple_of}")
        img = center_crop(resize_shorter(img, size), size, size)
    else:
        w, h = img.width // multiple_of * multiple_of, img.height // multiple_of * multiple_of
        if w == 0 or h == 0:
            raise ValueError(f"image {path} ({img.width}x{img.height}) is smaller than the factor {multiple_of}")
        img = center_crop(img, w, h)
    return to_tensor(img)


def uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (clamped first: reconstructions are not bounded) -> the same layout as uint8 levels 0..255,
    exactly as the official code converts: 255 * ((x + 1) / 2) in float32, then truncated toward zero (the official
    sampler's `.clip(0, 255).astype(np.uint8)`, its evaluation's `.to(torch.uint8)` after clamp(-1, 1); both give
    these levels for every float32 input). Truncation puts about half of the values one level below rounding, which
    moves PSNR: +0.58 dB at 45 dB computed with rounding. It also means pixels p read as p / 127.5 - 1 come back as
    p - 1 for p in 1..95 (their float32 value lies just below p), as in the official evaluation's originals.

    Example:
        >>> uint8_levels(torch.tensor([-1.0, 0.0, 0.999, 1.0])).tolist()
        [0, 127, 254, 255]
    """
    return ((x.detach().float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] (clamped) -> (..., H, W, 3) uint8: one image or a batch."""
    return uint8_levels(x).movedim(-3, -1).cpu().numpy()


SHEET_GAP = 4  # pixels between tiles and around them
SHEET_GAP_VALUE = 128  # mid grey: stands out from black (digits) and white backgrounds alike
SHEET_LABEL_CHARS = 24  # longer row labels are cut (ImageNet names run to 50+ characters)


def contact_sheet(
    images: np.ndarray,
    per_row: int,
    *,
    row_labels: Sequence[str] | None = None,
    min_tile: int = 64,
    gap: int = SHEET_GAP,
    gap_value: int = SHEET_GAP_VALUE,
) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (H', W', 3) uint8 picture people can judge: rows of `per_row` tiles (a short last
    row stays empty), `gap` pixels of grey `gap_value` between the tiles and around them, and `row_labels[r]` (black,
    PIL's default font) in a margin at the left of row r.

    Each image is enlarged by the smallest integer factor, nearest neighbour (the pixels stay honest), that makes its
    shorter side at least `min_tile`; larger images keep their size. Example: 30 images of 16 x 16, 10 per row ->
    3 rows of 64 x 64 tiles (x4), 10 * 64 + 11 * 4 = 684 pixels wide plus the label margin.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"contact_sheet: expected (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    if per_row < 1 or gap < 0:
        raise ValueError(f"contact_sheet: per_row must be >= 1 and gap >= 0, got {per_row} and {gap}")
    n, h, w, _ = images.shape
    rows, cols = -(-n // per_row), min(per_row, n)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"contact_sheet: {len(row_labels)} row labels for {rows} rows")
    factor = max(1, -(-min_tile // min(h, w)))
    tiles = images.repeat(factor, axis=1).repeat(factor, axis=2)  # (N, h * factor, w * factor, 3)
    th, tw = h * factor, w * factor
    labels = [_cut(str(t)) for t in row_labels] if row_labels is not None else []
    font = _label_font() if labels else None
    boxes = [_text_box(font, t) for t in labels]  # (left, top, right, bottom) of each label's ink
    margin = max(b[2] - b[0] for b in boxes) + gap if labels else 0
    sheet = np.full((rows * (th + gap) + gap, margin + cols * (tw + gap) + gap, 3), gap_value, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, per_row)
        top, left = gap + r * (th + gap), margin + gap + c * (tw + gap)
        sheet[top : top + th, left : left + tw] = tile
    if not labels:
        return sheet
    from PIL import Image, ImageDraw

    picture = Image.fromarray(sheet)
    draw = ImageDraw.Draw(picture)
    for r, (text, (x0, y0, _, y1)) in enumerate(zip(labels, boxes, strict=True)):
        top = gap + r * (th + gap) + (th - (y1 - y0)) // 2  # centred on the row
        draw.text((gap - x0, top - y0), text, fill=(0, 0, 0), font=font)
    return np.asarray(picture)


def _label_font():
    from PIL import ImageFont

    return ImageFont.load_default()  # built into PIL: no font file to find


def _text_box(font, text: str) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in font.getbbox(text)) if text else (0, 0, 0, 0)


def _cut(text: str) -> str:
    return text if len(text) <= SHEET_LABEL_CHARS else text[: SHEET_LABEL_CHARS - 3] + "..."
