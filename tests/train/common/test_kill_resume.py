"""Kill -9 a training process (mid-training, and mid-checkpoint-write), resume with --resume auto: the run continues
exactly as an uninterrupted one (same loss sequence, same weights and optimizer state), data order included."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

CLI = "import sys; from magvit2.cli import main; sys.exit(main(sys.argv[1:]))"


def _argv(tokens, out, steps, every, extra=(), kind="ar"):
    if kind == "ar":
        what = ["ar", "--config", "ar-tiny", "--data", str(tokens / "tokens")]
    else:  # the tokenizer on the same 16 images (4 batches an epoch), GAN and LeCAM on from step 1
        what = [
            "tokenizer",
            "--config",
            "tiny",
            "--data",
            str(tokens / "images"),
            "--set",
            "data.size=32",
            "--set",
            "loss.disc_start=1",
            "--set",
            "data.num_workers=0",
            "--set",
            "trainer.image_every_n_steps=0",
        ]
    return [sys.executable, "-c", CLI, "train", *what, "--out", str(out), "--max-steps", str(steps), "--no-progress",
            "--set", "data.batch_size=4", "--set", "trainer.log_every_n_steps=1",
            "--set", f"trainer.checkpoint_every_n_steps={every}", *extra]  # fmt: skip


LOSS = {"ar": "train/loss", "tokenizer": "train/total"}


def _losses(out, kind="ar"):
    runs = []
    for version in sorted((out / "logs").iterdir()):
        with open(version / "metrics.csv") as f:
            runs.append([(int(r["step"]), float(r[LOSS[kind]])) for r in csv.DictReader(f) if r.get(LOSS[kind])])
    return runs


def _state(out):
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"], [o["state"] for o in ckpt["optimizer_states"]], ckpt["global_step"]


def _kill_when(cmd, ready, timeout=300):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.001)
    alive = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive, f"the run ended before the kill point: {proc.stderr.read()[-2000:]}"


def _resume_and_compare(tokens, straight, killed, steps, every, extra=(), kind="ar"):
    argv = _argv(tokens, killed, steps, every, [*extra, "--resume", "auto"], kind)
    done = subprocess.run(argv, capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (reference,) = _losses(straight, kind)
    first, resumed = _losses(killed, kind)
    assert resumed and resumed == reference[-len(resumed) :]  # same steps, same losses, bit for bit
    a_sd, a_opts, a_step = _state(straight)
    b_sd, b_opts, b_step = _state(killed)
    assert a_step == b_step == steps * (2 if kind == "tokenizer" else 1)  # Lightning counts G and D steps
    assert a_sd.keys() == b_sd.keys() and all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)  # incl. EMA, LeCAM
    for a_opt, b_opt in zip(a_opts, b_opts, strict=True):
        assert all(torch.equal(a_opt[i][m], b_opt[i][m]) for i in a_opt for m in ("exp_avg", "exp_avg_sq"))
    return first, resumed


@pytest.mark.slow
def test_sigkill_mid_training_resumes_exactly(tokens, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert subprocess.run(_argv(tokens, straight, 10, 1), capture_output=True).returncode == 0
    # killed once the checkpoint after batch 6 exists, while the run goes on: last.ckpt is batch 5's or 6's
    # (it moves only after a complete step file), both in the middle of the second epoch (4 batches an epoch)
    _kill_when(_argv(tokens, killed, 10, 1), lambda: (killed / "checkpoints" / "step-000006.ckpt").exists())
    first, resumed = _resume_and_compare(tokens, straight, killed, 10, 1)
    assert len(resumed) in (4, 5)


@pytest.mark.slow
def test_sigkill_mid_checkpoint_write_resumes_exactly(tokens, tmp_path):
    big = ["--set", "model.dim=512"]  # ~170 MB checkpoints: a write long enough to be interrupted
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert subprocess.run(_argv(tokens, straight, 7, 3, big), capture_output=True).returncode == 0
    folder = killed / "checkpoints"

    def writing_second():  # the temporary file of a checkpoint write after step 3's is complete
        names = os.listdir(folder) if folder.exists() else []
        return "step-000003.ckpt" in names and any(n.endswith(".tmp") for n in names)

    _kill_when(_argv(tokens, killed, 7, 3, big), writing_second)
    left = sorted(os.listdir(folder))
    assert any(n.endswith(".tmp") for n in left)  # killed during the write
    for name in left:  # every .ckpt present is complete
        if name.endswith(".ckpt"):
            torch.load(folder / name, map_location="cpu", weights_only=True)
    _resume_and_compare(tokens, straight, killed, 7, 3, big)


@pytest.mark.slow
def test_sigkill_mid_training_resumes_the_tokenizer_exactly(tokens, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(_argv(tokens, straight, 8, 1, kind="tokenizer"), capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    argv = _argv(tokens, killed, 8, 1, kind="tokenizer")
    _kill_when(argv, lambda: (killed / "checkpoints" / "step-000006.ckpt").exists())
    first, resumed = _resume_and_compare(tokens, straight, killed, 8, 1, kind="tokenizer")
    assert len(resumed) in (2, 3)
