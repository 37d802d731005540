"""Benchmark harness: smoke sizes by default (CI runs `pytest benchmarks --benchmark-disable`), full sizes with
MAGVIT2_BENCH_FULL=1. Every benchmark checks its outputs; ratios are measured inside one test by interleaving the
contenders (so machine noise hits both alike), collected here, printed at the end and written to
.benchmarks/ratios.json. pytest-benchmark's own table (with --benchmark-enable) gives the absolute times."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

FULL = os.environ.get("MAGVIT2_BENCH_FULL", "0") == "1"
RATIOS: list[tuple[str, str, float, str]] = []  # (benchmark, ratio name, value, target)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, the functions run in turn round after round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def record(bench: str, name: str, value: float, target: str = "") -> None:
    RATIOS.append((bench, name, value, target))


@pytest.fixture
def ratio():
    return record


def pytest_terminal_summary(terminalreporter):
    if not RATIOS:
        return
    mode = "full" if FULL else "smoke"
    terminalreporter.section(f"magvit2 ratios ({mode} sizes, {torch.get_num_threads()} threads, one run)")
    for bench, name, value, target in RATIOS:
        terminalreporter.write_line(f"{bench:<34} {name:<44} {value:>10.2f}   {target}")
    out = Path(".benchmarks")
    out.mkdir(exist_ok=True)
    rows = [dict(benchmark=b, ratio=n, value=v, target=t) for b, n, v, t in RATIOS]
    (out / "ratios.json").write_text(
        json.dumps({"mode": mode, "threads": torch.get_num_threads(), "ratios": rows}, indent=1)
    )
