"""Checkpoint writes are atomic: a write that fails, or a process killed in the middle of one, leaves the previous
checkpoint whole."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from magvit2.train.common.io import AtomicCheckpointIO


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.arange(5.0)}, target)
    before = target.read_bytes()
    big = {"step": 2, "w": torch.zeros(1 << 20), "broken": Unpicklable()}  # fails after the tensor is written
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint(big, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(target)["step"] == 1
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, target, storage_options={"x": 1})


WRITER = """
import sys, torch
from magvit2.train.common.io import AtomicCheckpointIO
AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.ones(96 << 20)}, sys.argv[1])  # 384 MB
"""


def test_process_killed_mid_write_keeps_the_previous_checkpoint(tmp_path):
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.arange(5.0)}, target)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once the temporary file holds part of the new checkpoint
        tmp = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        if tmp and tmp[0].stat().st_size > (1 << 20):
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and tmp, "the writer finished before it could be killed"
    loaded = io.load_checkpoint(target)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(5.0))


def test_trainers_write_through_it(tmp_path):
    from magvit2.train.common.builder import build_trainer
    from magvit2.train.tokenizer.config import load_config

    trainer = build_trainer(load_config("tiny"), tmp_path, progress=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_refuses_a_checkpoint_that_would_run_code(tokens, tmp_path, capsys):
    from magvit2.cli import main

    marker = tmp_path / "pwned"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(
        {"state_dict": {}, "hyper_parameters": Payload(str(marker))}, tmp_path / "run" / "checkpoints" / "last.ckpt"
    )
    argv = ["train", "ar", "--config", "ar-tiny", "--data", str(tokens / "tokens"), "--out", str(tmp_path / "run"),
            "--max-steps", "1", "--resume", "auto", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "refusing to load" in capsys.readouterr().err and not marker.exists()
