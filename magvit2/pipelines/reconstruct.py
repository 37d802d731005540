"""Encode and decode image files with a tokenizer, behind `magvit2 reconstruct`: side-by-side PNGs and per-image PSNR
(computed as the official evaluation: uint8 levels rescaled to [0, 1], reconstructions clamped first). With a video
tokenizer: video files and frame folders, a side-by-side GIF and a frame strip PNG per clip, PSNR averaged over its
frames."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from magvit2.data.images import list_images, load_image, to_uint8
from magvit2.data.video import (
    UnreadableVideo,
    clip_tensor,
    is_frame_folder,
    list_videos,
    probe_video,
    read_frames,
    write_video,
)
from magvit2.eval.image_metrics import psnr, quantize_uint8
from magvit2.nn.video.tokenizer import VideoTokenizer


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
    frames: int = 17,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[ReconstructionResult]:
    """Encode and decode each image (one at a time: sizes may differ); write `<stem>.png` side by side. `paths`:
    image files, or folders searched recursively. `out_dir` must be new or empty (nothing is overwritten).
    A VideoTokenizer takes videos instead (`frames`: at most this many from the start of each, cut to 1 + a multiple
    of the temporal factor)."""
    from PIL import Image
    from tqdm.auto import tqdm

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output folder {out} is not empty; choose a new one")
    if isinstance(model, VideoTokenizer):
        return _reconstruct_videos(model, paths, out, size=size, frames=frames, device=device, progress=progress)
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


class VideoReconstructionResult(NamedTuple):
    source: str
    output: str  # side-by-side GIF: original | reconstruction
    strip: str  # PNG: the original frames in a row above the reconstructed ones
    frames: int
    height: int
    width: int
    grid: tuple[int, ...]  # token grid (t, h, w)
    psnr: float  # mean over frames


def _center_square(clip: torch.Tensor, size: int | None, f: int) -> torch.Tensor:
    """(3, T, H, W): with `size`, shorter side resized to it (bilinear) and centre-cropped square; else cropped to
    multiples of `f`."""
    _, t, h, w = clip.shape
    if size is not None:
        if size < f or size % f:
            raise ValueError(f"size {size} must be a positive multiple of the downsampling factor {f}")
        scale = size / min(h, w)
        nh, nw = max(size, int(h * scale)), max(size, int(w * scale))
        clip = torch.nn.functional.interpolate(clip.movedim(1, 0), size=(nh, nw), mode="bilinear").movedim(0, 1)
        h, w, th, tw = nh, nw, size, size
    else:
        th, tw = h // f * f, w // f * f
        if th == 0 or tw == 0:
            raise ValueError(f"frames of {w}x{h} are smaller than the factor {f}")
    top, left = (h - th) // 2, (w - tw) // 2
    return clip[:, :, top : top + th, left : left + tw]


def _reconstruct_videos(model, paths, out: Path, *, size, frames, device, progress) -> list[VideoReconstructionResult]:
    from PIL import Image
    from tqdm.auto import tqdm

    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    files = [f for p in paths for f in (list_videos(p) if Path(p).is_dir() and not is_frame_folder(p) else [Path(p)])]
    out.mkdir(parents=True, exist_ok=True)
    tf, f = model.temporal_factor, model.downsample_factor
    results, used = [], set()
    for path in tqdm(files, unit="clip", desc="reconstruct", disable=not progress):
        info = probe_video(path)
        n = 1 + (min(frames, info.frames) - 1) // tf * tf  # 1 + a multiple of the temporal factor
        try:
            clip = clip_tensor(read_frames(path, 0, n))
        except UnreadableVideo as e:
            raise ValueError(f"cannot read video {e}") from None
        x = _center_square(clip, size, f).to(device)
        quantized, indices = model.encode(x[None])
        rec = model.decode(quantized)[0]
        orig_frames = np.stack([to_uint8(x[:, k]) for k in range(n)])
        rec_frames = np.stack([to_uint8(rec[:, k]) for k in range(n)])
        per_frame = psnr(quantize_uint8(x.movedim(1, 0)), quantize_uint8(rec.movedim(1, 0)))
        name = Path(path).stem
        while name in used:
            name += "_"
        used.add(name)
        gif, strip = out / f"{name}.gif", out / f"{name}_strip.png"
        write_video(gif, np.concatenate([orig_frames, rec_frames], axis=2))
        rows = [np.concatenate(list(orig_frames), axis=1), np.concatenate(list(rec_frames), axis=1)]
        Image.fromarray(np.concatenate(rows, axis=0)).save(strip)
        grid = tuple((indices[0] if isinstance(indices, tuple) else indices).shape[-3:])
        h, w = orig_frames.shape[1:3]
        results.append(
            VideoReconstructionResult(str(path), str(gif), str(strip), n, h, w, grid, float(per_frame.mean()))
        )
    return results
