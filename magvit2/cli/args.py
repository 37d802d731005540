"""Argument types and flags shared by the command groups of `magvit2` (argparse only)."""

from __future__ import annotations

import argparse


def bits(text: str) -> tuple[int, ...] | str | None:
    """'6,12' -> (6, 12); 'none' -> None; 'auto' -> 'auto'."""
    if text.lower() in ("none", "auto"):
        return None if text.lower() == "none" else "auto"
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 6,12 or 'none', got {text!r}") from None


def floats(text: str) -> tuple[float, float]:
    """'1.9,2.0' -> (1.9, 2.0); '2' -> (2.0, 2.0): a value per sub-token (pre, post)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or two like 1.9,2.0, got {text!r}") from None
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected one value or a pair (pre, post), got {text!r}")
    return (values[0], values[-1])


def ints(text: str) -> tuple[int, int]:
    a, b = floats(text)
    if a != int(a) or b != int(b):
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}")
    return (int(a), int(b))


def positive_int(text: str) -> int:
    """A count such as --max-steps or --limit: a positive integer (0 and negatives mean nothing sensible here)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


MODEL_HELP = "model directory (magvit2 export / save_pretrained) or an official .ckpt"


def threads(text: str) -> int | str:
    """'auto' or a positive int (see magvit2/ops/threads.py for what 'auto' picks)."""
    from magvit2.ops.threads import parse_threads

    try:
        value = parse_threads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    return "auto" if value is None else value


def add_threads(parser: argparse.ArgumentParser) -> None:
    """--threads N|auto, the same on every command that runs a model."""
    from magvit2.ops.threads import THREADS_HELP, available_cpus

    # None = auto; left None so that a training config's trainer.threads stands unless the flag is given
    parser.add_argument("--threads", type=threads, default=None, help=THREADS_HELP.format(cores=available_cpus()))
