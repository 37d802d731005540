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


def _argv(tokens, out, steps, every, extra=()):
    return [sys.executable, "-c", CLI, "train", "ar", "--config", "ar-tiny", "--data", str(tokens / "tokens"),
            "--out", str(out), "--max-steps", str(steps), "--no-progress", "--set", "data.batch_size=4",
            "--set", "trainer.log_every_n_steps=1", "--set", f"trainer.checkpoint_every_n_steps={every}",
            *extra]  # fmt: skip


def _losses(out):
    runs = []
    for version in sorted((out / "logs").iterdir()):
        with open(version / "metrics.csv") as f:
            runs.append([(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")])
    return runs


def _state(out):
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["optimizer_states"][0]["state"], ckpt["global_step"]


def _kill_when(cmd, ready, timeout=300):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.001)
    alive = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive, f"the run ended before the kill point: {proc.stderr.read()[-2000:]}"


def _resume_and_compare(tokens, straight, killed, steps, every, extra=()):
    done = subprocess.run(_argv(tokens, killed, steps, every, [*extra, "--resume", "auto"]), capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (reference,) = _losses(straight)
    first, resumed = _losses(killed)
    assert resumed and resumed == reference[-len(resumed) :]  # same steps, same losses, bit for bit
    a_sd, a_opt, a_step = _state(straight)
    b_sd, b_opt, b_step = _state(killed)
    assert a_step == b_step == steps
    assert all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)
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
