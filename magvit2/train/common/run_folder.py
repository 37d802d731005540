"""A run folder that one run owns at a time and that survives signals: the lock, leftovers of killed checkpoint
writes, fresh runs into used folders, the checkpoint `--resume auto` continues from, and SIGTERM / SIGINT.

`run_folder(out, resume)` (what the trainers' fit functions run inside):
- rank 0 of the run (global zero; DDP's other processes, re-executed by Lightning's launcher with LOCAL_RANK /
  NODE_RANK set, skip all of this) creates `OUT/run.lock` holding its pid and host, atomically (written beside,
  then hard-linked: it exists whole or not at all). A second run into the folder is refused (FileExistsError naming
  the folder and the holder); a lock whose pid is dead on this host is taken over with a one-line note. The lock
  goes on any exit that runs Python's cleanup (normal end, error, SIGTERM / SIGINT; not SIGKILL: stale, taken over).
- removes the temporary files of killed checkpoint writes (AtomicCheckpointIO's `.NAME.PID.tmp`) in checkpoints/;
- refuses a fresh run (resume None) into a folder that already holds checkpoints: resuming later would mix them;
- resolves `resume` ('auto': the newest complete checkpoint, resume.resolve_resume; StepCheckpoint says which on
  stderr once it loaded whole, this says when there is none);
- catches SIGTERM and SIGINT (`StopSignals`): during training the run stops at the end of the step in progress,
  after writing checkpoints/last.ckpt (StepCheckpoint, all processes at the same step), and raises
  `TrainingInterrupted` (exit status 128 + signal: 143, 130); before the first step it stops at once.
  A second Ctrl-C aborts without saving.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from magvit2.nn.weights import TEMP_NAME

LOCK_NAME = "run.lock"


def is_global_zero() -> bool:
    """Whether this process is rank 0 of the whole run, known before Lightning starts: its DDP launcher re-executes
    the command for the other local ranks with LOCAL_RANK set, other nodes run with NODE_RANK, torchrun and SLURM
    set RANK / SLURM_PROCID."""
    for name in ("NODE_RANK", "GROUP_RANK", "RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "0") not in ("", "0"):
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    """An exclusive lock file: `pid host` in a file created whole (hard link of a written temporary file)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path, self.held = Path(path), False
        self.content = f"{os.getpid()} {socket.gethostname()}\n"

    def _create(self) -> bool:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.content)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> None:
        folder = self.path.parent
        if self._create():
            self.held = True
            return
        try:
            pid_text, host = self.path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            pid, host = None, None
        if pid is not None and (host != socket.gethostname() or _pid_alive(pid)):
            # another host's pid cannot be checked from here: only a person can tell that lock is stale
            gone = "" if host == socket.gethostname() else f" (if it is gone, delete {self.path})"
            raise FileExistsError(
                f"--out: run folder {folder} is in use by pid {pid} on {host} ({self.path}); wait for that run to "
                f"end or choose another --out{gone}"
            )
        # the holder is dead (or the file is not a lock of ours): take the lock over
        self.path.unlink(missing_ok=True)
        if not self._create():
            raise FileExistsError(f"--out: run folder {folder} was just locked by another run ({self.path})")
        self.held = True
        holder = f"pid {pid} on {host}, no such process" if pid is not None else "unreadable"
        print(f"took over the stale lock {self.path} ({holder})", file=sys.stderr, flush=True)

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                if self.path.read_text() == self.content:
                    self.path.unlink()
            except FileNotFoundError:
                pass


def clean_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files killed checkpoint writes left in `folder` (only AtomicCheckpointIO's)."""
    folder = Path(folder)
    removed = [p for p in folder.glob(".*.tmp") if TEMP_NAME.match(p.name) and p.is_file()] if folder.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def refuse_used_folder(out: str | os.PathLike) -> None:
    """A fresh run into a folder that holds checkpoints: FileExistsError (the old ones would be resumed later)."""
    folder = Path(out) / "checkpoints"
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise FileExistsError(
            f"--out: run folder {out} already holds checkpoints ({shown}); pass --resume auto to continue that "
            "run, or choose another --out"
        )


class TrainingInterrupted(SystemExit):
    """A run stopped by a signal; exit status 128 + signum. `path`: the checkpoint it saved (None: none)."""

    def __init__(self, signum: int, path: str | None = None, step: int | None = None) -> None:
        super().__init__(128 + signum)
        self.signum, self.path, self.step = signum, path, step

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        if self.path is None:
            return f"stopped by {name} before the first training step; nothing new to save"
        return f"stopped by {name} after step {self.step}: saved {self.path}; continue with --resume auto"


class StopSignals:
    """SIGTERM / SIGINT handlers for a run: before training they stop the run at once; once `defer()` is called
    (at training start) they only record the signal, and StepCheckpoint stops the run at the end of the step.
    Lightning replaces the SIGTERM handler when training starts (its notifier, composed with ours, makes the loops
    exit with status 0 and no checkpoint): `defer()` installs ours again over it. Main thread only (no-op elsewhere)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received, self.deferring, self.previous = 0, False, {}

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                signal.signal(signum, self._handle)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}
            self._install()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def defer(self) -> None:
        self.deferring = True
        self._install()

    def _handle(self, signum: int, frame) -> None:
        if not self.deferring:
            raise TrainingInterrupted(signum)
        if self.received and signum == signal.SIGINT:  # Ctrl-C twice: abort without saving
            raise KeyboardInterrupt
        self.received = self.received or signum


@contextmanager
def run_folder(out: str | os.PathLike, resume: str | None) -> Iterator[tuple[str | None, StopSignals]]:
    """Own the run folder `out` for a run (see the module docstring); yields (checkpoint to resume or None, the
    run's StopSignals for StepCheckpoint)."""
    from magvit2.train.common.resume import resolve_resume

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    zero = is_global_zero()
    lock = RunLock(out / LOCK_NAME)
    with StopSignals() as signals:
        try:
            if zero:
                lock.acquire()
                removed = clean_temp_files(out / "checkpoints")
                if removed:
                    print(f"removed {len(removed)} unfinished checkpoint write(s) in {out / 'checkpoints'}",
                          file=sys.stderr, flush=True)  # fmt: skip
                if resume is None:
                    refuse_used_folder(out)
            ckpt_path = resolve_resume(resume, out)
            if zero and resume is not None and ckpt_path is None:  # the checkpoint found: StepCheckpoint says it
                print(f"--resume auto: no checkpoint in {out / 'checkpoints'}; starting fresh", file=sys.stderr)
            yield ckpt_path, signals
        finally:
            lock.release()
