"""Command-line entry point: `magvit2 <command>`. Thin: parses arguments and calls into the package."""

from __future__ import annotations

import argparse
import sys


def _info(args: argparse.Namespace) -> int:
    import magvit2
    from magvit2.ops import backends

    print(f"magvit2 {magvit2.__version__}")
    for line in backends.info_lines():
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magvit2", description="Open-MAGVIT2 tokenizer and AR generation.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="print which backend serves each op on each device type, and why")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
