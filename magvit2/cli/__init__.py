"""Command-line entry point `magvit2 <command>`: argparse only, one module per command group (models, train, eval,
sample, demo); each command calls one function of the package."""

from __future__ import annotations

import argparse
import sys

from magvit2.cli import demo, eval, models, sample, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magvit2", description="Open-MAGVIT2 tokenizer and AR generation.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.add_commands(commands)
    train.add_commands(commands)
    eval.add_commands(commands)
    sample.add_commands(commands)
    demo.add_commands(commands)
    return parser


# Packages of the optional extras (pyproject.toml) that commands import, and the extra that installs each.
EXTRAS = {"lightning": "train", "yaml": "train", "sklearn": "train", "skimage": "train", "tensorboard": "train"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # user errors and the system's (disk full, permissions): one line
        print(f"magvit2 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional extra that is not installed: say which
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"magvit2 {args.command}: error: this command needs the {extra!r} extra (no module {e.name!r}): "
            f"pip install 'magvit2[{extra}]' (from a checkout: pip install '.[{extra}]')",
            file=sys.stderr,
        )
        return 2


__all__ = ["build_parser", "main"]
