"""How many CPU threads torch (and the C++ kernels' `at::parallel_for`) use: one policy behind every `--threads`.

`auto` gives one thread to models under SMALL_MODEL_PARAMS parameters and this process's share of the CPUs to larger
ones. Small models run ops of a few microseconds each, too short to split: on a shared 2-core machine with the load
average at 9, OpenMP's spinning barriers made a tiny AR step 4.1 s with 2 threads vs 0.33 s with 1, and a tiny
tokenizer step 12 s vs 0.85 s; on an idle one two threads gain at most 1.4x there (0.047 s vs 0.066 s). A 112M
tokenizer's training step takes 5.4 s with 2 threads vs 9.9 s with 1 (idle machine): large models want every core.
One thread also makes a CPU run bit-reproducible.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

SMALL_MODEL_PARAMS = 5_000_000
THREADS_HELP = (
    "CPU threads: a number or 'auto' (default: 1 for models under 5M parameters, whose ops are too short to split "
    "and run far slower on more threads on a busy machine; else all {cores} CPUs of this machine, shared among the "
    "processes of a multi-process run)"
)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_threads(value: int | str | None) -> int | None:
    """'auto' / None -> None (decided by model size); an int or digits >= 1 -> that int; else a one-line error."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}")
    return value


def count_parameters(*models: torch.nn.Module | None) -> int:
    return sum(p.numel() for m in models if m is not None for p in m.parameters())


def auto_threads(parameters: int, *, processes: int = 1) -> int:
    """The `auto` policy: 1 thread below SMALL_MODEL_PARAMS parameters, else the CPUs shared by `processes`."""
    if parameters < SMALL_MODEL_PARAMS:
        return 1
    return max(1, available_cpus() // max(1, processes))


def resolve_threads(threads: int | str | None, *models: torch.nn.Module | None, processes: int = 1) -> int:
    """The thread count for running `models` (summed parameters) with the given setting."""
    fixed = parse_threads(threads)
    return fixed if fixed is not None else auto_threads(count_parameters(*models), processes=processes)


@contextlib.contextmanager
def using_threads(threads: int | str | None, *models: torch.nn.Module | None, processes: int = 1) -> Iterator[int]:
    """Run the block with `resolve_threads(...)` torch threads and restore the previous count after it."""
    n = resolve_threads(threads, *models, processes=processes)
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)


__all__ = [
    "SMALL_MODEL_PARAMS",
    "THREADS_HELP",
    "auto_threads",
    "available_cpus",
    "count_parameters",
    "parse_threads",
    "resolve_threads",
    "using_threads",
]
