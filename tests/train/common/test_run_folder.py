"""A run folder under signals, moves, reuse and concurrent runs, run as users run it (`python -m magvit2.cli train`
subprocesses, real signals): SIGTERM / Ctrl-C save a checkpoint that resumes exactly, names are never versioned, a
used folder needs --resume, one run per folder (run.lock), leftovers of killed writes go, and `--resume auto` finds
the newest complete checkpoint of any name."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from magvit2.train.common.resume import resolve_resume

STEP = re.compile(r"\| *(\d+)/\d+ \[")


def _argv(tokens, out, steps, every, extra=(), kind="ar"):
    if kind == "ar":
        what = ["ar", "--config", "ar-tiny", "--data", str(tokens / "tokens")]
    else:
        what = ["tokenizer", "--config", "tiny", "--data", str(tokens / "images"), "--set", "data.size=32",
                "--set", "loss.disc_start=1", "--set", "data.num_workers=0",
                "--set", "trainer.image_every_n_steps=0"]  # fmt: skip
    return [sys.executable, "-m", "magvit2.cli", "train", *what, "--out", str(out), "--max-steps", str(steps),
            "--threads", "1", "--set", "data.batch_size=4",
            "--set", f"trainer.checkpoint_every_n_steps={every}", *extra]  # fmt: skip


def _env():
    return {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "PYTHONWARNINGS")}


def _run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=_env())


def _state(out, name="last.ckpt"):
    ckpt = torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=True)
    return ckpt["state_dict"], [o["state"] for o in ckpt["optimizer_states"]], ckpt["global_step"]


def _same_state(a, b):
    a_sd, a_opts, a_step = _state(a)
    b_sd, b_opts, b_step = _state(b)
    assert a_step == b_step
    assert a_sd.keys() == b_sd.keys() and all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)
    for a_opt, b_opt in zip(a_opts, b_opts, strict=True):
        assert all(torch.equal(a_opt[i][m], b_opt[i][m]) for i in a_opt for m in ("exp_avg", "exp_avg_sq"))


class _Run:
    """A training subprocess whose stderr (progress bar included) is read as it comes."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        self.err, self.out = [], []
        self.readers = [threading.Thread(target=self._read, args=(s, b)) for s, b in
                        ((self.proc.stderr, self.err), (self.proc.stdout, self.out))]  # fmt: skip
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, into):
        for chunk in iter(lambda: stream.read(1), ""):
            into.append(chunk)

    def step(self) -> int:
        found = STEP.findall("".join(self.err))
        return int(found[-1]) if found else 0

    def wait_for_step(self, n, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None and self.step() < n:
            time.sleep(0.01)
        assert self.proc.poll() is None, f"the run ended before step {n}: {''.join(self.err)[-2000:]}"

    def finish(self):
        code = self.proc.wait(timeout=600)
        for reader in self.readers:
            reader.join()
        return code, "".join(self.out), "".join(self.err)


def _interrupt_and_resume(tokens, tmp_path, signum, kind, steps):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = _run(_argv(tokens, straight, steps, 1000, ["--no-progress"], kind))
    assert done.returncode == 0, done.stderr[-3000:]
    run = _Run(_argv(tokens, stopped, steps, 1000, kind=kind))  # no step checkpoint before the end
    run.wait_for_step(2)
    os.kill(run.proc.pid, signum)
    code, out, err = run.finish()
    assert code == 128 + signum, err[-3000:]
    name = signal.Signals(signum).name
    last = stopped / "checkpoints" / "last.ckpt"
    lines = [line for line in err.splitlines() if line.startswith("magvit2 train: stopped by")]
    assert len(lines) == 1, err[-3000:]
    saved_step = _state(stopped)[2] // (2 if kind == "tokenizer" else 1)
    assert (
        lines[0]
        == f"magvit2 train: stopped by {name} after step {saved_step}: saved {last}; continue with --resume auto"
    )
    assert 2 <= saved_step < steps
    assert sorted(os.listdir(stopped / "checkpoints")) == ["last.ckpt"]  # written by the stop, nothing else
    assert not (stopped / "run.lock").exists()
    resumed = _run(_argv(tokens, stopped, steps, 1000, ["--no-progress", "--resume", "auto"], kind))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last} (step {saved_step})" in resumed.stderr
    _same_state(straight, stopped)  # the same weights and optimizer state as the uninterrupted run, bit for bit


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes_exactly(tokens, tmp_path):
    _interrupt_and_resume(tokens, tmp_path, signal.SIGTERM, "ar", 40)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resumes_the_tokenizer_exactly(tokens, tmp_path):
    _interrupt_and_resume(tokens, tmp_path, signal.SIGINT, "tokenizer", 12)


@pytest.mark.slow
def test_a_fresh_run_into_a_used_folder_is_refused(tokens, tmp_path):
    out = tmp_path / "run"
    assert _run(_argv(tokens, out, 4, 2, ["--no-progress"])).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    again = _run(_argv(tokens, out, 4, 2, ["--no-progress"]))  # no --resume
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"magvit2 train: error: --out: run folder {out} already holds checkpoints (last.ckpt, step-000002.ckpt, "
        "step-000004.ckpt); pass --resume auto to continue that run, or choose another --out"
    ]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == before  # untouched


@pytest.mark.slow
def test_a_moved_run_folder_keeps_its_checkpoint_names(tokens, tmp_path):
    first, moved = tmp_path / "first", tmp_path / "moved"
    assert _run(_argv(tokens, first, 4, 2, ["--no-progress"])).returncode == 0
    shutil.move(first, moved)
    done = _run(_argv(tokens, moved, 6, 2, ["--no-progress", "--resume", "auto"]))
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(os.listdir(moved / "checkpoints"))
    assert names == ["last.ckpt", "step-000002.ckpt", "step-000004.ckpt", "step-000006.ckpt"]  # no last-v1.ckpt
    assert _state(moved)[2] == 6  # last.ckpt is the newest step: `--resume auto` continues from it


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_one_run_per_folder_and_a_stale_lock_is_taken_over(tokens, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")  # held by this live process
    refused = _run(_argv(tokens, out, 2, 1, ["--no-progress", "--resume", "auto"]))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"magvit2 train: error: --out: run folder {out} is in use by pid {os.getpid()} on {socket.gethostname()} "
        f"({out / 'run.lock'}); wait for that run to end or choose another --out"
    ]
    assert not (out / "checkpoints").exists()
    pid = _dead_pid()
    (out / "run.lock").write_text(f"{pid} {socket.gethostname()}\n")
    done = _run(_argv(tokens, out, 2, 1, ["--no-progress", "--resume", "auto"]))
    assert done.returncode == 0, done.stderr[-3000:]
    lock = out / "run.lock"
    assert f"took over the stale lock {lock} (pid {pid} on {socket.gethostname()}, no such process)" in done.stderr
    assert f"--resume auto: no checkpoint in {out / 'checkpoints'}; starting fresh" in done.stderr
    assert not lock.exists() and _state(out)[2] == 2


@pytest.mark.slow
def test_a_second_run_while_the_first_trains_is_refused(tokens, tmp_path):
    out = tmp_path / "run"
    run = _Run(_argv(tokens, out, 10**6, 1000))  # trains until stopped
    run.wait_for_step(1)
    second = _run(_argv(tokens, out, 2, 1000, ["--no-progress", "--resume", "auto"]))
    assert run.proc.poll() is None  # the first run still trains
    os.kill(run.proc.pid, signal.SIGTERM)
    code, _, err = run.finish()
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()
    assert f"run folder {out} is in use by pid {run.proc.pid} on " in line
    assert code == 143, err[-3000:]


@pytest.mark.slow
def test_resume_auto_after_a_kill_during_the_first_last_ckpt_write(tokens, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _run(_argv(tokens, straight, 4, 2, ["--no-progress"])).returncode == 0
    folder = killed / "checkpoints"
    folder.mkdir(parents=True)
    # what a kill during the first last.ckpt write leaves: step 2's file whole, last.ckpt's temporary file cut short
    shutil.copy(straight / "checkpoints" / "step-000002.ckpt", folder)
    data = (straight / "checkpoints" / "last.ckpt").read_bytes()
    (folder / ".last.ckpt.4242.tmp").write_bytes(data[: len(data) // 2])
    (folder / ".step-000004.ckpt.4242.tmp").write_bytes(data[:100])
    (folder / "notes.tmp").write_text("not ours")
    done = _run(_argv(tokens, killed, 4, 2, ["--no-progress", "--resume", "auto"]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {folder / 'step-000002.ckpt'} (step 2)" in done.stderr
    assert "removed 2 unfinished checkpoint write(s)" in done.stderr
    assert sorted(os.listdir(folder)) == ["last.ckpt", "notes.tmp", "step-000002.ckpt", "step-000004.ckpt"]
    _same_state(straight, killed)


def test_resume_auto_takes_the_newest_complete_checkpoint(tokens, tmp_path):
    source = tmp_path / "source"
    assert _run(_argv(tokens, source, 4, 2, ["--no-progress"])).returncode == 0
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("step-000002.ckpt", "step-000004.ckpt"):
        shutil.copy(source / "checkpoints" / name, folder)
    shutil.copy(source / "checkpoints" / "step-000002.ckpt", folder / "last.ckpt")  # an older last.ckpt
    assert resolve_resume("auto", tmp_path / "run") == str(folder / "step-000004.ckpt")
    data = (folder / "step-000004.ckpt").read_bytes()
    (folder / "step-000004.ckpt").write_bytes(data[:-1000])  # cut short (not written by our atomic writer)
    assert resolve_resume("auto", tmp_path / "run") == str(folder / "last.ckpt")
    shutil.copy(source / "checkpoints" / "last.ckpt", folder / "last.ckpt")  # step 4, a tie: last.ckpt
    shutil.copy(source / "checkpoints" / "step-000004.ckpt", folder)
    assert resolve_resume("auto", tmp_path / "run") == str(folder / "last.ckpt")
    torch.save({"weights": torch.zeros(2)}, folder / "step-000009.ckpt")  # complete, but no training checkpoint
    with pytest.raises(ValueError, match="step-000009.ckpt is not a training checkpoint"):
        resolve_resume("auto", tmp_path / "run")


@pytest.mark.slow
def test_sigterm_to_rank_0_of_a_ddp_run_stops_both_processes_and_resumes_exactly(tokens, tmp_path):
    # what Kubernetes does: SIGTERM to the command's process (rank 0) only; rank 1 learns it from the all-reduce
    ddp = ["--devices", "2", "--accelerator", "cpu"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = _run(_argv(tokens, straight, 12, 1000, [*ddp, "--no-progress"]))
    assert done.returncode == 0, done.stderr[-3000:]
    run = _Run(_argv(tokens, stopped, 12, 1000, ddp))
    run.wait_for_step(2)
    os.kill(run.proc.pid, signal.SIGTERM)
    code, _, err = run.finish()
    assert code == 143, err[-3000:]
    saved_step = _state(stopped)[2]
    assert err.count("magvit2 train: stopped by SIGTERM") == 1 and 2 <= saved_step < 12
    resumed = _run(_argv(tokens, stopped, 12, 1000, [*ddp, "--no-progress", "--resume", "auto"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_state(straight, stopped)
