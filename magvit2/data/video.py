"""Video files and frame folders -> clips (3, T, H, W) in [-1, 1], for the video tokenizer.

Decoding: PyAV (FFmpeg's libraries in the `av` wheel: mp4/H.264, avi, webm/VP8-9, mkv, mov, gif). A frame folder (a
directory of image files and no sub-directories, frames in name order) is a video too. A folder tree in the UCF-101
layout (root/<class>/<video>) gives each clip its class: the parent folder's name, sorted names -> 0, 1, ...

Clips (as the official `ucf101.VideoDataset`): `frames` consecutive frames (every `frame_stride`-th; 1 as the
official loader, which reads its config's `frame_sample_rate` but never uses it), a random window in training and the
centre window (frame count // 2 - frames // 2 on) in evaluation; each frame's shorter side resized to `size` (PIL
bilinear, as our image pipeline; the official loader uses OpenCV's INTER_LINEAR), the same crop for every frame of a
clip (random in training, centred in evaluation: the official crops at random in both), pixel / 127.5 - 1 rounded to
float32 as the image pipeline. Training windows and crops are drawn from (seed, epoch, index): a resumed run and any
number of workers read the same clips.

A file that cannot be opened, has no video stream, or frames above the image limits, and a video shorter than a clip,
is skipped at construction with one warning counting them and naming the first few (`usable_videos`); a file that
fails later, when decoded, is replaced by the next readable one in training (with a warning).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from magvit2.data.images import (
    IMAGE_EXTENSIONS,
    MAX_ASPECT,
    MAX_PIXELS,
    UnreadableImage,
    first_reasons,
    folder_labels,
    open_rgb,
    resize_shorter,
)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".gif", ".m4v")


class UnreadableVideo(ValueError):
    """A video that cannot be opened or decoded; the message is "<path>: <why>"."""


class VideoInfo(NamedTuple):
    path: Path
    frames: int
    height: int
    width: int


def _av():
    """PyAV, or an ImportError saying how to install it (an optional dependency: `pip install magvit2[video]`)."""
    try:
        import av
    except ImportError:
        raise ImportError("reading and writing video files needs PyAV: pip install 'magvit2[video]' (or av)") from None
    return av


def is_frame_folder(path: str | os.PathLike) -> bool:
    """A directory of files only, at least one an image: one video, its frames in name order."""
    path = Path(path)
    entries = list(path.iterdir())
    return bool(entries) and all(e.is_file() for e in entries) and any(_is_image(e) for e in entries)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _frame_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def list_videos(folder: str | os.PathLike) -> list[Path]:
    """Video files (by extension) and frame folders under `folder`, recursively, sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"video folder {root} does not exist or is not a directory")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here != root and not dirnames and is_frame_folder(here):
            found.append(here)
            continue
        found += [here / f for f in filenames if Path(f).suffix.lower() in VIDEO_EXTENSIONS]
    return sorted(found)


def _check_size(path: Path, height: int, width: int) -> None:
    if height < 1 or width < 1 or height * width > MAX_PIXELS or max(height, width) > MAX_ASPECT * min(height, width):
        raise UnreadableVideo(
            f"{path}: frames of {width}x{height} exceed the limits ({MAX_PIXELS} pixels, aspect ratio {MAX_ASPECT})"
        )


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count and size of a video file (from its container, counting packets when the header has no count) or of
    a frame folder (its first frame's header). Raises UnreadableVideo naming the file."""
    path = Path(path)
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise UnreadableVideo(f"{path}: a frame folder without image files")
        try:
            first = open_rgb(files[0])
        except UnreadableImage as e:
            raise UnreadableVideo(f"{path}: first frame unreadable: {e}") from None
        _check_size(path, first.height, first.width)
        return VideoInfo(path, len(files), first.height, first.width)
    av = _av()

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableVideo(f"{path}: no video stream")
            stream = container.streams.video[0]
            height, width = stream.codec_context.height, stream.codec_context.width
            _check_size(path, height, width)
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
    except UnreadableVideo:
        raise
    except Exception as e:  # whatever FFmpeg reports for a broken or foreign file
        raise UnreadableVideo(f"{path}: {type(e).__name__}: {e}") from None
    return VideoInfo(path, int(frames), int(height), int(width))


def read_frames(path: str | os.PathLike, start: int, count: int, stride: int = 1) -> np.ndarray:
    """Frames start, start + stride, ... (`count` of them) as (count, H, W, 3) uint8 RGB. Raises UnreadableVideo when
    the file ends early or fails to decode."""
    path = Path(path)
    wanted = [start + k * stride for k in range(count)]
    if path.is_dir():
        files = _frame_files(path)
        if wanted and wanted[-1] >= len(files):
            raise UnreadableVideo(f"{path}: {len(files)} frames, frame {wanted[-1]} asked for")
        try:
            frames = [np.asarray(open_rgb(files[i]), dtype=np.uint8) for i in wanted]
        except UnreadableImage as e:
            raise UnreadableVideo(f"{path}: {e}") from None
        if any(f.shape != frames[0].shape for f in frames):
            raise UnreadableVideo(f"{path}: frames of different sizes")
        return np.stack(frames)
    av = _av()

    out: list[np.ndarray] = []
    keep = set(wanted)
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in keep:
                    out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == count:
                    break
    except Exception as e:
        raise UnreadableVideo(f"{path}: {type(e).__name__}: {e}") from None
    if len(out) < count:
        raise UnreadableVideo(f"{path}: ended after {len(out)} of the {count} frames asked for (from frame {start})")
    return np.stack(out)


def usable_videos(paths: Sequence[str | os.PathLike], *, min_frames: int = 1, show: int = 5) -> list[VideoInfo]:
    """The probed videos with at least `min_frames` frames; the others are dropped with ONE warning giving their count
    and the first `show` with the reason. Raises ValueError when none is usable."""
    good: list[VideoInfo] = []
    bad: list[str] = []
    for path in paths:
        try:
            info = probe_video(path)
        except UnreadableVideo as e:
            bad.append(str(e))
            continue
        if info.frames < min_frames:
            bad.append(f"{info.path}: {info.frames} frames, a clip needs {min_frames}")
        else:
            good.append(info)
    first = first_reasons(bad, show)
    if bad:
        warnings.warn(f"skipped {len(bad)} of {len(paths)} videos (unreadable or too short): {first}", stacklevel=2)
    if not good:
        raise ValueError(f"none of the {len(paths)} videos can be used: {first}")
    return good


def _resize_crop(frames: np.ndarray, size: int, top_left: tuple[float, float]) -> np.ndarray:
    """Each frame's shorter side to `size` (PIL bilinear; the longer side truncated, as `resize_shorter`), then the
    size x size crop at fractions `top_left` of the free room (0.5, 0.5: centred)."""
    from PIL import Image

    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for k, frame in enumerate(frames):
        img = np.asarray(resize_shorter(Image.fromarray(frame), size))
        top = round((img.shape[0] - size) * top_left[0])
        left = round((img.shape[1] - size) * top_left[1])
        out[k] = img[top : top + size, left : left + size]
    return out


def clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32 in [-1, 1]: pixel / 127.5 - 1 in float64, rounded to float32 (as the
    image pipeline's `to_tensor`)."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    return (pixels.double() / 127.5 - 1.0).float()


class VideoClips(Dataset):
    """Clips of `frames` frames from the videos under `root` (or the `paths` given): item = ((3, frames, size, size)
    float32 in [-1, 1], class id). Keys are an index or (index, epoch) (a resumable loader passes the epoch).

    Example:
        >>> clips = VideoClips("UCF-101/train", frames=17, size=128)  # doctest: +SKIP
        >>> clip, label = clips[0]  # doctest: +SKIP
    """

    takes_epoch = True

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        paths: Sequence[str | os.PathLike] | None = None,
        frames: int = 17,
        size: int = 128,
        frame_stride: int = 1,
        train: bool = True,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        for name, value in (("frames", frames), ("size", size), ("frame_stride", frame_stride)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VideoClips: {name} must be a positive int, got {value!r}")
        if (root is None) == (paths is None):
            raise ValueError("VideoClips: give either root (a folder of videos) or paths, not both")
        found = list_videos(root) if root is not None else [Path(p) for p in paths]
        if not found:
            raise ValueError(
                f"VideoClips: no video files ({', '.join(VIDEO_EXTENSIONS)}) or frame folders under {root}"
            )
        self.frames, self.size, self.stride, self.train, self.seed = frames, size, frame_stride, train, seed
        self.span = (frames - 1) * frame_stride + 1  # source frames a clip covers
        self.videos = usable_videos(found, min_frames=self.span)
        self.class_names, self.labels = folder_labels([v.path for v in self.videos], class_names)

    def __len__(self) -> int:
        return len(self.videos)

    def _clip(self, info: VideoInfo, rng: np.random.Generator | None) -> torch.Tensor:
        room = info.frames - self.span
        if rng is None:  # evaluation: the centre window and crop
            start, top_left = max(0, min(room, info.frames // 2 - self.frames // 2)), (0.5, 0.5)
        else:
            start, top_left = int(rng.integers(0, room + 1)), (float(rng.random()), float(rng.random()))
        frames = read_frames(info.path, start, self.frames, self.stride)
        return clip_tensor(_resize_crop(frames, self.size, top_left))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, i]) if self.train else None
        for k in range(len(self.videos)):
            j = (i + k) % len(self.videos)
            try:
                return self._clip(self.videos[j], rng), self.labels[j]
            except UnreadableVideo as e:
                warnings.warn(f"skipped a video that failed to decode: {e}", stacklevel=2)
        raise UnreadableVideo(f"none of the {len(self.videos)} videos can be decoded")


def write_video(path: str | os.PathLike, frames: np.ndarray, *, fps: int = 8) -> None:
    """(T, H, W, 3) uint8 RGB frames -> a video file by its extension: .gif (Pillow: an adaptive 256-colour palette
    per frame, looping), .mp4 (H.264, yuv420p: even sizes) or .webm (VP9). Written to a temporary name and renamed:
    no half-written file."""
    path = Path(path)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"write_video: frames must be (T, H, W, 3) uint8 with T >= 1, got {frames.shape}")
    codecs = {".gif": None, ".mp4": ("mp4", "libx264"), ".webm": ("webm", "libvpx-vp9")}
    if path.suffix.lower() not in codecs:
        raise ValueError(f"write_video: {path} must end in one of {', '.join(codecs)}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the temporary-file pattern of magvit2.nn.weights
    try:
        if codecs[path.suffix.lower()] is None:
            from PIL import Image

            images = [Image.fromarray(f) for f in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
        else:
            av = _av()

            container_format, codec = codecs[path.suffix.lower()]
            with av.open(str(tmp), "w", format=container_format) as container:
                stream = container.add_stream(codec, rate=fps)
                stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
                for frame in frames:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
