"""Video files -> clips: real videos written with PyAV (H.264 mp4, VP9 webm, gif) and PNG frame folders made from
scikit-image's photos panned across the frame, in the UCF-101 class-folder layout; probing, windows, crops, the
official scaling, skipped files and atomic writes."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from magvit2.data.video import (
    UnreadableVideo,
    VideoClips,
    clip_tensor,
    list_videos,
    probe_video,
    read_frames,
    write_video,
)


def panned(photo: np.ndarray, frames: int, size=(48, 64)) -> np.ndarray:
    """`frames` windows of `size` (h, w) sliding 2 pixels a frame across a photo: (T, h, w, 3) uint8."""
    h, w = size
    return np.stack([photo[10 : 10 + h, 2 * t : 2 * t + w] for t in range(frames)])


def numbered(frames: int, size=(40, 56)) -> np.ndarray:
    """Frames whose pixels all hold the frame number * 10 (exactly recoverable from PNG)."""
    return np.stack([np.full((*size, 3), 10 * t, dtype=np.uint8) for t in range(frames)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from skimage import data

    root = tmp_path_factory.mktemp("ucf")
    (root / "Astronaut").mkdir()
    (root / "Coffee").mkdir()
    astro, coffee = data.astronaut(), data.coffee()
    clips = {
        "Astronaut/a.mp4": panned(astro, 21),
        "Astronaut/b.webm": panned(astro[100:], 19),
        "Coffee/c.gif": panned(coffee, 18),
    }
    for name, frames in clips.items():
        write_video(root / name, frames)
    frames_dir = root / "Coffee" / "d_frames"
    frames_dir.mkdir()
    for t, frame in enumerate(numbered(25)):
        Image.fromarray(frame).save(frames_dir / f"{t:04d}.png")
    return root, clips


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def test_list_and_probe(videos):
    root, clips = videos
    found = list_videos(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "Astronaut/a.mp4", "Astronaut/b.webm", "Coffee/c.gif", "Coffee/d_frames"]  # fmt: skip
    counts = {p.name: probe_video(p).frames for p in found}
    assert counts == {"a.mp4": 21, "b.webm": 19, "c.gif": 18, "d_frames": 25}
    info = probe_video(root / "Astronaut/a.mp4")
    assert (info.height, info.width) == (48, 64)


def test_decoded_frames_match_what_was_written(videos):
    root, clips = videos
    mp4 = read_frames(root / "Astronaut/a.mp4", 3, 5, stride=2)  # frames 3, 5, 7, 9, 11
    assert mp4.shape == (5, 48, 64, 3) and mp4.dtype == np.uint8
    assert all(psnr(mp4[k], clips["Astronaut/a.mp4"][3 + 2 * k]) > 28 for k in range(5))  # lossy H.264
    webm = read_frames(root / "Astronaut/b.webm", 0, 19)
    assert min(psnr(webm[k], clips["Astronaut/b.webm"][k]) for k in range(19)) > 28
    exact = read_frames(root / "Coffee/d_frames", 4, 3, stride=3)  # PNG: lossless
    assert np.array_equal(exact, numbered(25)[[4, 7, 10]])
    with pytest.raises(UnreadableVideo, match=r"a\.mp4: ended after 21 of the 30 frames"):
        read_frames(root / "Astronaut/a.mp4", 0, 30)


def test_clips_windows_crops_and_scaling(videos):
    root, _ = videos
    clips = VideoClips(root, frames=9, size=32, train=False)
    assert len(clips) == 4 and clips.class_names == ["Astronaut", "Coffee"]
    assert clips.labels.tolist() == [0, 0, 1, 1]
    clip, label = clips[3]  # the numbered frame folder: 25 frames, centre window from 25 // 2 - 9 // 2 = 8
    assert clip.shape == (3, 9, 32, 32) and clip.dtype == torch.float32 and label == 1
    levels = ((clip[0, :, 0, 0].double() + 1) * 127.5).round().long()
    assert levels.tolist() == [10 * t for t in range(8, 17)]
    assert torch.equal(clip[0, 0], torch.full((32, 32), float(np.float32(80 / 127.5 - 1))))  # official scaling
    train = VideoClips(root, frames=9, size=32, frame_stride=2, seed=3)
    a, b = train[(3, 0)], train[(3, 0)]
    assert torch.equal(a[0], b[0])  # the window and crop come from (seed, epoch, index)
    starts = {int(((train[(3, e)][0][0, 0, 0, 0].double() + 1) * 127.5).round()) // 10 for e in range(8)}
    assert len(starts) > 1 and all(0 <= s <= 25 - 17 for s in starts)
    second = ((train[(3, 0)][0][0, :, 0, 0].double() + 1) * 127.5).round().long() // 10
    assert torch.equal(second - second[0], torch.arange(0, 18, 2))  # every frame_stride-th frame
    assert train[(0, 0)][0].abs().max() <= 1


def test_unreadable_and_short_videos_are_skipped_with_one_warning(videos, tmp_path):
    root, clips = videos
    work = tmp_path / "mixed"
    work.mkdir()
    write_video(work / "good.mp4", clips["Astronaut/a.mp4"])
    write_video(work / "short.gif", clips["Coffee/c.gif"][:4])
    (work / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = VideoClips(work, frames=9, size=32)
    assert len(ds) == 1 and ds.videos[0].path.name == "good.mp4"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("skipped 2 of 3 videos (unreadable or too short)")
    assert "noise.mp4" in messages[0] and "short.gif: 4 frames, a clip needs 9" in messages[0]
    with pytest.warns(UserWarning, match="skipped 1 of 1"), pytest.raises(ValueError, match="none of the 1 videos"):
        VideoClips(paths=[work / "noise.mp4"], frames=9, size=32)
    with pytest.raises(ValueError, match="VideoClips: frames must be a positive int, got 0"):
        VideoClips(work, frames=0)
    with pytest.raises(ValueError, match="does not exist or is not a directory"):
        VideoClips(tmp_path / "nowhere")


def test_a_video_that_fails_to_decode_is_replaced_in_training(videos, tmp_path):
    root, clips = videos
    work = tmp_path / "trunc"
    work.mkdir()
    write_video(work / "a.mp4", clips["Astronaut/a.mp4"])
    write_video(work / "b.mp4", clips["Astronaut/a.mp4"])
    ds = VideoClips(work, frames=17, size=32)
    data = (work / "a.mp4").read_bytes()
    (work / "a.mp4").write_bytes(data[: len(data) // 3])  # passes the probe above; fails when decoded
    with pytest.warns(UserWarning, match=r"skipped a video that failed to decode: .*a\.mp4"):
        clip, _ = ds[0]
    assert clip.shape == (3, 17, 32, 32)


def test_write_video_is_atomic_and_checks_its_input(tmp_path):
    frames = numbered(3, size=(16, 16))
    write_video(tmp_path / "x.gif", frames)
    assert np.array_equal(read_frames(tmp_path / "x.gif", 0, 3), frames)  # few colours: a lossless gif
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gif"]
    with pytest.raises(ValueError, match=r"must be \(T, H, W, 3\) uint8 with T >= 1"):
        write_video(tmp_path / "y.gif", frames[..., 0])
    with pytest.raises(ValueError, match=r"must end in one of \.gif, \.mp4, \.webm"):
        write_video(tmp_path / "y.avi", frames)
    assert clip_tensor(frames).shape == (3, 3, 16, 16)


def test_magvit2_reconstruct_videos(videos, tmp_path, capsys):
    """`magvit2 reconstruct` with a video tokenizer: real video files and a frame folder -> GIF + strip + PSNR."""
    from magvit2 import VideoTokenizer
    from magvit2.cli import main

    root, _ = videos
    torch.manual_seed(0)
    VideoTokenizer.from_preset("tiny").save_pretrained(tmp_path / "model")
    args = ["reconstruct", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--size", "16"]
    assert main(args + ["--frames", "6", str(root / "Astronaut/a.mp4"), str(root / "Coffee/d_frames")]) == 0
    out = capsys.readouterr().out
    assert "a.mp4  5 frames 16x16  tokens 3x4x4  PSNR" in out and "d_frames  5 frames 16x16" in out
    assert "over 2 video(s)" in out
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["a.gif", "a_strip.png", "d_frames.gif", "d_frames_strip.png"]
    gif = read_frames(tmp_path / "out" / "a.gif", 0, 5)
    assert gif.shape == (5, 16, 32, 3)  # original | reconstruction
    strip = np.asarray(Image.open(tmp_path / "out" / "a_strip.png"))
    assert strip.shape == (32, 80, 3)  # 2 rows of 5 frames of 16 x 16
    with pytest.raises(SystemExit) as exit_:
        main(["reconstruct", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "o2"), "--frames", "0",
              str(root)])  # fmt: skip
    assert exit_.value.code == 2 and "--frames: expected a positive integer, got '0'" in capsys.readouterr().err
