"""`magvit2 train video-tokenizer` end to end on real video files (H.264 mp4, gif, PNG frame folders made from
scikit-image photos panned across the frame): checkpoints in the official video layout that `magvit2 convert` reads,
the cosine schedule as logged, frame sheets, and a SIGKILL mid-training resumed bit for bit."""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from magvit2 import VideoTokenizer
from magvit2.cli import main
from magvit2.data.video import write_video
from magvit2.demos.photos_data import load_photo
from tests.train.common.test_kill_resume import _kill_when, _losses, _state

CLI = "import sys; from magvit2.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two classes, 3 videos each (mp4, gif, frame folder), 9 frames of 40 x 40 sliding across a photo."""
    root = tmp_path_factory.mktemp("videos")
    for label, names in (("cat", ("chelsea", "coffee", "chelsea")), ("rocket", ("rocket", "astronaut", "rocket"))):
        (root / label).mkdir()
        for k, name in enumerate(names):
            photo = load_photo(name, shorter_side=64)
            frames = np.stack([photo[4 + k : 44 + k, 2 * t : 2 * t + 40] for t in range(9)])
            if k == 0:
                write_video(root / label / f"{name}{k}.mp4", frames)
            elif k == 1:
                write_video(root / label / f"{name}{k}.gif", frames)
            else:
                (root / label / f"{name}{k}").mkdir()
                for t, frame in enumerate(frames):
                    Image.fromarray(frame).save(root / label / f"{name}{k}" / f"{t:03d}.png")
    return root


def _argv(data, out, steps, every, extra=()):
    return [sys.executable, "-c", CLI, "train", "video-tokenizer", "--config", "tiny", "--data", str(data),
            "--out", str(out), "--max-steps", str(steps), "--no-progress", "--set", "data.batch_size=2",
            "--set", "loss.disc_start=1", "--set", "optim.warmup_steps=2", "--set", "trainer.log_every_n_steps=1",
            "--set", "trainer.image_every_n_steps=0", "--set", f"trainer.checkpoint_every_n_steps={every}",
            *extra]  # fmt: skip


def _logged(out, key):
    rows = []
    for version in sorted((out / "logs").iterdir()):
        with open(version / "metrics.csv") as f:
            rows += [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]
    return rows


def test_video_training_checkpoints_schedule_and_convert(clips, tmp_path, capsys):
    out = tmp_path / "run"
    done = subprocess.run(_argv(clips, out, 6, 3, ["--set", "trainer.image_every_n_steps=3"]), capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    assert sd["encoder.conv_in.conv_1.weight"].shape == (32, 3, 3, 3, 3)
    assert sd["loss.discriminator.main.0.weight"].dim() == 5 and "model_ema.encoderconv_inconv_1weight" in sd
    assert ckpt["magvit2"]["kind"] == "video-tokenizer" and ckpt["magvit2"]["batch_step"] == 6
    # the cosine schedule per batch: warm-up from 0 over 2 steps, then down to 0.01 x lr at step max_steps - 1
    lrs = dict(_logged(out, "train/lr"))
    steps = sorted(lrs)
    assert len(steps) == 6

    def want(b):
        if b < 2:
            return 1e-3 * b / 2
        return 1e-3 * (0.01 + 0.99 * (0.5 + 0.5 * math.cos(math.pi * (b - 2) / 3)))

    assert [round(lrs[s], 9) for s in steps] == [round(want(b), 9) for b in range(6)]
    assert (out / "images" / "final.png").is_file() and (out / "images" / "step-000003.png").is_file()
    assert main(["convert", str(out / "checkpoints" / "last.ckpt"), str(tmp_path / "model")]) == 0
    model = VideoTokenizer.from_pretrained(tmp_path / "model")
    assert torch.equal(model.state_dict()["encoder.conv_in.conv_1.weight"], sd["model_ema.encoderconv_inconv_1weight"])
    q, idx = model.encode(torch.rand(1, 3, 5, 32, 32) * 2 - 1)
    assert idx.shape == (1, 3, 8, 8)


def test_a_video_run_refuses_an_image_checkpoint(clips, tmp_path):
    out = tmp_path / "run"
    assert subprocess.run(_argv(clips, out, 1, 1), capture_output=True).returncode == 0
    image = subprocess.run(
        [
            sys.executable,
            "-c",
            CLI,
            "train",
            "tokenizer",
            "--config",
            "tiny",
            "--data",
            str(clips),
            "--out",
            str(out),
            "--resume",
            "auto",
            "--max-steps",
            "2",
            "--no-progress",
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert image.returncode == 2 and "a checkpoint of `magvit2 train video-tokenizer`" in image.stderr


@pytest.mark.slow
def test_sigkill_mid_training_resumes_the_video_tokenizer_exactly(clips, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(_argv(clips, straight, 7, 1), capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _kill_when(_argv(clips, killed, 7, 1), lambda: (killed / "checkpoints" / "step-000004.ckpt").exists())
    done = subprocess.run(_argv(clips, killed, 7, 1, ["--resume", "auto"]), capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (reference,) = _losses(straight, "tokenizer")
    first, resumed = _losses(killed, "tokenizer")
    assert resumed and resumed == reference[-len(resumed) :]  # same steps, same losses, bit for bit
    a_sd, a_opts, a_step = _state(straight)
    b_sd, b_opts, b_step = _state(killed)
    assert a_step == b_step == 14  # Lightning counts G and D steps
    assert a_sd.keys() == b_sd.keys() and all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)  # incl. EMA, LeCAM
    for a_opt, b_opt in zip(a_opts, b_opts, strict=True):
        assert all(torch.equal(a_opt[i][m], b_opt[i][m]) for i in a_opt for m in ("exp_avg", "exp_avg_sq"))


def test_a_fresh_run_inflates_an_image_checkpoint_raw_and_ema(clips, tmp_path):
    """init.inflate_from: the image checkpoint's raw weights into the model, its EMA weights into the EMA (after one
    step at a negligible lr and EMA decay 0.999 both are still where the inflation put them)."""
    from magvit2 import Tokenizer, TokenizerConfig
    from magvit2.nn.video.tokenizer import inflate_state_dict
    from tests.checkpoints.test_image import lightning_checkpoint

    config = TokenizerConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)  # the widths of the video tiny preset
    torch.manual_seed(7)
    raw, ema = Tokenizer(config), Tokenizer(config)
    torch.save(lightning_checkpoint(raw, ema), tmp_path / "image.ckpt")
    out = tmp_path / "run"
    extra = ["--set", f"init.inflate_from={tmp_path / 'image.ckpt'}", "--set", "optim.lr=1e-12",
             "--set", "optim.ema_warmup=false", "--set", "optim.warmup_steps=0"]  # fmt: skip
    done = subprocess.run(_argv(clips, out, 1, 1, extra), capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    sd = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    shapes = {k: v for k, v in VideoTokenizer.from_preset("tiny").state_dict().items()}
    want_raw, want_ema = inflate_state_dict(raw.state_dict(), shapes), inflate_state_dict(ema.state_dict(), shapes)
    key = "decoder.conv_out.conv_1.weight"
    torch.testing.assert_close(sd[key], want_raw[key], rtol=0, atol=1e-8)
    shadow = sd["model_ema." + key.replace(".", "")]
    torch.testing.assert_close(shadow, 0.999 * want_ema[key] + 0.001 * want_raw[key], rtol=0, atol=1e-6)
    assert not torch.allclose(shadow, want_raw[key], atol=1e-4)
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            CLI,
            "train",
            "tokenizer",
            "--config",
            "tiny",
            "--data",
            str(clips),
            "--out",
            str(tmp_path / "img"),
            "--set",
            f"init.inflate_from={tmp_path / 'image.ckpt'}",
            "--no-progress",
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "init.inflate_from: inflation initialises a video tokenizer" in bad.stderr
