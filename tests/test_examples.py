"""The demo that `make demo` runs works end to end (and checks itself against the official formula)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_lfq_ops_example():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "lfq_ops.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "factorized [6, 12]" in out.stdout and "official formula, N=128" in out.stdout
