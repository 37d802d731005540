"""The CLI under random argument lists: every outcome is a clean exit (0, or 2 with a one-line message from argparse
or from the command), never a traceback. Paths point nowhere, so no command does real work."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from magvit2.cli import main

COMMANDS = ["convert", "reconstruct", "encode", "export", "sample", "eval", "train", "info", "bogus"]
WORDS = ["tokenizer", "ar", "--model", "--data", "--out", "--config", "--size", "--classes", "--per-class", "--cfg",
         "--temperature", "--top-k", "--top-p", "--set", "--max-steps", "--devices", "--resume", "--factorized-bits",
         "--n-head", "--block-size", "--tokenizer", "tiny", "ar-tiny", "nope.ckpt", "/nonexistent/dir", "0", "-1",
         "1.5", "nan", "1,2", "all", "x=y", "model.dim=abc", "trainer.max_steps=-5", "6,12", "", "--help"]  # fmt: skip


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(COMMANDS), rest=st.lists(st.sampled_from(WORDS), max_size=8))
def test_random_argument_lists_exit_cleanly(command, rest, capsys):
    try:
        code = main([command, *rest])
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        code = e.code
    assert code in (0, 2)
    err = capsys.readouterr().err
    if code == 2:
        assert "error:" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["demo"], ["train", "tokenizer", "--config", "tiny"]], ids=["demo", "train"])
def test_a_missing_extra_is_named_in_one_line(command):
    """Without the `train` extra (lightning), the commands that need it say so in one line and exit 2."""
    import subprocess
    import sys

    code = "import sys; sys.modules['lightning'] = None\nfrom magvit2.cli import main\nsys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert "needs the 'train' extra (no module 'lightning')" in lines[0] and "pip install 'magvit2[train]'" in lines[0]
