"""What `magvit2 train` prints, run as users run it (a subprocess of the installed entry point's module): one
progress bar in training steps with the true total, one start line, and none of Lightning's chatter."""

import os
import re
import subprocess
import sys

import pytest

# Lines a training run printed before (Lightning 2.6 on a CPU): device banners, adverts, warnings that do not apply,
# "`max_steps=8` reached" after --max-steps 4, a new "Epoch N" bar for each epoch, the DDP banner and the
# FutureWarning of the entropy all-reduce. Any "Warning" at all fails the test too.
NOISE = (
    "GPU available",
    "TPU available",
    "Tip:",
    "litlogger",
    "log_every_n_steps",
    "logging interval",
    "eval mode",
    "max_steps=",
    "Epoch",
    "Initializing distributed",
    "distributed_backend",
    "processes registered",
    "Warning",
    "warn",
    "bucket view",
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two class folders of 32 px crops of real photographs: 12 per class, several epochs in a few steps."""
    from PIL import Image

    from magvit2.demos.photos_data import load_photo

    root = tmp_path_factory.mktemp("train-cli")
    for label, name in (("cat", "chelsea"), ("rocket", "rocket")):
        (root / "images" / label).mkdir(parents=True)
        photo = load_photo(name, shorter_side=64)
        for i in range(12):
            y, x = (i % 4) * 8, (i // 4) * 10
            Image.fromarray(photo[y : y + 32, x : x + 32]).save(root / "images" / label / f"{i:02d}.png")
    from magvit2.nn import Tokenizer

    Tokenizer.from_preset("tiny").save_pretrained(root / "tokenizer")
    return root


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "PYTHONWARNINGS")}
    proc = subprocess.run(
        [sys.executable, "-m", "magvit2.cli", *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _check_output(
    proc: subprocess.CompletedProcess, *, steps: int, kind: str, processes: int, threads: int, start: int = 0
) -> None:
    both = proc.stdout + proc.stderr
    found = [noise for noise in NOISE if noise in both]
    assert not found, f"noise {found} in:\n{both[-3000:]}"
    assert proc.stdout.strip().splitlines()[-1].startswith(f"trained {steps} steps; checkpoints in ")
    line = f"{kind} training on cpu: {processes} process(es), {threads} CPU thread(s) each; steps {start} -> {steps}"
    assert proc.stderr.count(line) == 1, proc.stderr[-3000:]
    frames = [f for f in re.split(r"[\r\n]+", proc.stderr) if f.startswith("train:")]
    totals = {re.search(r"\| *\d+/(\S+) \[", f).group(1) for f in frames}
    assert totals == {str(steps)}, frames  # one bar, its true total from the first frame on (no "0/?")
    assert any(f" {steps}/{steps} [" in f for f in frames) and f" {start}/{steps} [" in frames[0]


@pytest.mark.slow
def test_tokenizer_training_under_ddp_prints_one_bar_and_no_noise(photos, tmp_path):
    # 24 images over 2 processes at batch 4: 3 batches per epoch, so 4 steps cross an epoch; log interval 10 > 3
    proc = _run(
        ["train", "tokenizer", "--config", "tiny", "--data", str(photos / "images"), "--out", str(tmp_path / "run"),
         "--max-steps", "4", "--devices", "2", "--accelerator", "cpu", "--set", "data.batch_size=4",
         "--set", "trainer.log_every_n_steps=10", "--set", "model.global_entropy=true"],
        tmp_path,
    )  # fmt: skip
    _check_output(proc, steps=4, kind="tokenizer", processes=2, threads=1)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_ar_training_on_the_fly_prints_one_bar_and_no_noise(photos, tmp_path):
    # the AR module holds its frozen tokenizer in eval mode (Lightning warned about it); --threads 2 is obeyed
    args = ["train", "ar", "--config", "ar-tiny", "--data", str(photos / "images"), "--tokenizer",
            str(photos / "tokenizer"), "--out", str(tmp_path / "run"), "--set", "data.size=32",
            "--set", "data.batch_size=8"]  # fmt: skip
    _check_output(_run([*args, "--max-steps", "5", "--threads", "2"], tmp_path), steps=5, kind="AR", processes=1,
                  threads=2)  # fmt: skip
    # resumed: the bar starts at the checkpoint's step, and no warning that the checkpoint folder is not empty
    proc = _run([*args, "--max-steps", "7", "--resume", "auto"], tmp_path)
    _check_output(proc, steps=7, kind="AR", processes=1, threads=1, start=5)


def test_a_folder_smaller_than_one_batch_is_a_one_line_error(photos, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "magvit2.cli", "train", "tokenizer", "--config", "tiny", "--data",
         str(photos / "images" / "cat"), "--out", str(tmp_path / "run"), "--set", "data.batch_size=16"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "magvit2 train: error: data: 12 training items are fewer than one batch (data.batch_size=16); "
        "lower data.batch_size or add data"
    ]
