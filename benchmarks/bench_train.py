"""One tokenizer training step (G + D) of the `tiny` and `open-magvit2-128-L` presets on this CPU: images/s and peak
memory with our entropy kernel vs the same step with the naive official entropy formula. Each variant runs in its own
process (train_step.py) so peak memory is not shared; the variants alternate, and the generator losses must agree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FULL

SCRIPT = Path(__file__).with_name("train_step.py")
# (preset, batch, image size, timed steps): full sizes give N = batch * (size / 4 or 8)^2 tokens per step
CASES = (
    [("tiny", 16, 32, 5), ("tiny", 16, 64, 3), ("open-magvit2-128-L", 2, 128, 1)]
    if FULL
    else [("tiny", 4, 32, 1)]  # CI smoke: a 128-L step takes tens of seconds on 2 cores
)


def run(kind: str, preset: str, batch: int, size: int, steps: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), kind, preset, str(batch), str(size), str(steps)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line[:1].isupper()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-b{c[1]}-{c[2]}px")
def test_train_step_vs_naive_entropy(case, ratio):
    preset, batch, size, steps = case
    rounds = 2 if FULL else 1
    results = {"ours": [], "naive": []}
    for _ in range(rounds):
        for kind in results:
            results[kind].append(run(kind, preset, batch, size, steps))
    ours = max(r["IMAGES_PER_S"] for r in results["ours"])
    naive = max(r["IMAGES_PER_S"] for r in results["naive"])
    mem_ours = min(r["PEAK_MIB"] for r in results["ours"])
    mem_naive = min(r["PEAK_MIB"] for r in results["naive"])
    loss_ours, loss_naive = results["ours"][0]["LOSS"], results["naive"][0]["LOSS"]
    assert loss_ours == pytest.approx(loss_naive, rel=1e-3, abs=1e-3)  # same step, same numbers
    name = f"{preset} b{batch} {size}px"
    ratio("train_step", f"{name}: ours img/s", ours)
    ratio("train_step", f"{name}: naive img/s", naive)
    ratio("train_step", f"{name}: speed-up ours/naive", ours / naive)
    ratio("train_step", f"{name}: peak MiB ours", mem_ours)
    ratio("train_step", f"{name}: peak MiB naive", mem_naive)
    ratio("train_step", f"{name}: memory naive/ours", mem_naive / max(mem_ours, 1e-3))
    assert ours > 0 and naive > 0 and mem_naive > 0
