"""`magvit2 demo [digits | tokenizer]`: the main job (digits generation, scored) or the photo tokenizer demo."""

from __future__ import annotations

import argparse

from magvit2.cli.args import add_threads


def demo(args: argparse.Namespace) -> int:
    if args.what == "tokenizer":
        from magvit2.demos.photos import run_demo, summary

        metrics = run_demo(
            args.out, steps=args.steps, overrides=args.set or [], threads=args.threads, progress=not args.no_progress
        )
        print(summary(metrics, args.out))
        return 0
    from magvit2.demos.digits import SampleSettings, run_digits_demo
    from magvit2.demos.digits import summary as digits_summary

    if args.steps is not None:
        raise ValueError("--steps is for `demo tokenizer`; the digits demo takes --tokenizer-steps and --ar-steps")
    sampling = SampleSettings(per_class=args.per_class, cfg=args.cfg, temperature=args.temperature, seed=args.seed)
    metrics = run_digits_demo(
        args.out,
        tokenizer_steps=args.tokenizer_steps,
        ar_steps=args.ar_steps,
        tokenizer_overrides=args.set or [],
        ar_overrides=args.ar_set or [],
        sampling=sampling,
        threads=args.threads or "auto",
        progress=not args.no_progress,
    )
    print(digits_summary(metrics, args.out))
    return 0


def add_commands(commands) -> None:
    d = commands.add_parser(
        "demo", help="digits (default): tokenizer + class-conditional AR on sklearn digits, scored; or tokenizer"
    )
    d.add_argument(
        "what",
        nargs="?",
        default="digits",
        choices=["digits", "tokenizer"],
        help="digits: the generation pipeline (the main job); tokenizer: the tiny tokenizer on bundled photographs",
    )
    d.add_argument("--out", default="demo-out")
    d.add_argument("--steps", type=int, default=None, help="tokenizer demo: training steps (default: the preset's)")
    d.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a tokenizer-config value")
    digits = d.add_argument_group("digits")
    digits.add_argument("--tokenizer-steps", type=int, help="tokenizer training steps (default: the digits config's)")
    digits.add_argument("--ar-steps", type=int, help="AR training steps (default: the ar-digits config's)")
    digits.add_argument("--ar-set", action="append", metavar="SECTION.KEY=VALUE", help="override an ar-digits value")
    digits.add_argument("--per-class", type=int, default=20, help="samples per class (default 20)")
    digits.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (default 3.0)")
    digits.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    digits.add_argument("--seed", type=int, default=0, help="sampling seed (training seeds: the configs')")
    add_threads(d)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=demo)
