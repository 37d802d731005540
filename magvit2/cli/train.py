"""`magvit2 train tokenizer | video-tokenizer | ar`: the trainers on Lightning (single device, DDP, multi-node)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from magvit2.cli.args import add_threads, positive_int

RUN_FLAGS = (("devices", "trainer.devices"), ("num_nodes", "trainer.num_nodes"), ("max_steps", "trainer.max_steps"),
             ("accelerator", "trainer.accelerator"), ("precision", "trainer.precision"),
             ("threads", "trainer.threads"))  # fmt: skip


def _run_overrides(args: argparse.Namespace, data_key: str) -> list[str]:
    """--set values, then --data and the run flags given on the command line, as section.key=value overrides."""
    overrides = list(args.set or [])
    if args.data is not None:
        overrides.append(f"{data_key}={args.data}")
    overrides += [f"{key}={getattr(args, flag)}" for flag, key in RUN_FLAGS if getattr(args, flag) is not None]
    return overrides


def _interruptible(fit, *args, **kwargs):
    """fit(...), or the exit status 128 + signal of a run stopped by SIGTERM / SIGINT (143 / 130) after one line
    saying where it saved, or 1 after one line for a run stopped by non-finite values (a training failure, not a
    usage error)."""
    from magvit2.train.common.guard import NonFiniteLossError
    from magvit2.train.common.run_folder import TrainingInterrupted, is_global_zero

    try:
        return fit(*args, **kwargs)
    except TrainingInterrupted as e:
        if is_global_zero():
            print(f"magvit2 train: {e.message()}", file=sys.stderr, flush=True)
        return e.code
    except NonFiniteLossError as e:
        if is_global_zero():
            print(f"magvit2 train: error: {e}", file=sys.stderr, flush=True)
        return 1


def train_tokenizer(args: argparse.Namespace) -> int:
    from magvit2.train.tokenizer import fit_tokenizer, load_config

    config = load_config(args.config, _run_overrides(args, "data.train"), kind=args.kind)
    done = _interruptible(fit_tokenizer, config, args.out, resume=args.resume, progress=not args.no_progress)
    if isinstance(done, int):
        return done
    trainer, module = done
    if trainer.is_global_zero:
        print(f"trained {module.batch_step} steps; checkpoints in {args.out}/checkpoints (last.ckpt)")
    return 0


def train_ar(args: argparse.Namespace) -> int:
    from magvit2.train.ar.config import load_ar_config
    from magvit2.train.ar.fit import fit_ar

    # --data names token shards or, with --tokenizer, images to tokenize on the fly; shards (a folder holding
    # tokens.json) with --tokenizer: the tokenizer that encoded them, moved since
    shards = args.tokenizer is None or (args.data is not None and Path(args.data, "tokens.json").is_file())
    overrides = _run_overrides(args, "data.tokens" if shards else "data.images")
    if args.tokenizer is not None:
        overrides.append(f"data.tokenizer={args.tokenizer}")
    config = load_ar_config(args.config, overrides)
    done = _interruptible(fit_ar, config, args.out, resume=args.resume, progress=not args.no_progress)
    if isinstance(done, int):
        return done
    trainer, module = done
    if trainer.is_global_zero:
        print(f"trained {module.global_step} steps; checkpoints in {args.out}/checkpoints (last.ckpt)")
    return 0


def _add_run_flags(parser: argparse.ArgumentParser, *, precision: str, steps: str) -> None:
    """The flags every `magvit2 train` command shares (see RUN_FLAGS for the config keys they set)."""
    parser.add_argument(
        "--resume",
        help="checkpoint to continue from, or 'auto' (the newest complete checkpoint in OUT/checkpoints, if any). "
        "Without it, an OUT that holds checkpoints is refused. One run per OUT at a time (OUT/run.lock). "
        "SIGTERM / Ctrl-C save OUT/checkpoints/last.ckpt at the end of the step and exit 143 / 130",
    )
    parser.add_argument("--devices", help="devices per node (int or 'auto')")
    parser.add_argument("--num-nodes", type=int, help="nodes; set MASTER_ADDR, MASTER_PORT, NODE_RANK on each")
    parser.add_argument("--accelerator", help="cpu, gpu, npu or auto")
    parser.add_argument("--precision", help=f"32-true, bf16-mixed or 16-mixed {precision}".strip())
    parser.add_argument("--max-steps", type=positive_int, help=steps)
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    add_threads(parser)
    parser.add_argument("--no-progress", action="store_true")


def add_commands(commands) -> None:
    train = commands.add_parser("train", help="train a model on Lightning (single device, DDP, multi-node)")
    what = train.add_subparsers(dest="what", required=True, metavar="MODEL")
    tok = what.add_parser("tokenizer", help="tokenizer: GAN + perceptual + LFQ losses, EMA; checkpoints + logs")
    tok.add_argument(
        "--config", required=True, help="YAML file or preset: open-magvit2-256-L, open-magvit2-128-L, tiny"
    )
    tok.add_argument("--data", help="image folder: ImageNet layout (train/ and val/) or a plain folder")
    tok.add_argument("--out", default="runs/tokenizer", help="run folder (checkpoints/, logs/, images/)")
    _add_run_flags(tok, precision="(the LFQ stays fp32)", steps="training steps (one G and one D update each)")
    tok.set_defaults(func=train_tokenizer, kind="tokenizer")

    vid = what.add_parser(
        "video-tokenizer", help="video tokenizer: the tokenizer trainer on clips, 3D discriminator, cosine schedule"
    )
    vid.add_argument("--config", required=True, help="YAML file or preset: open-magvit2-video-128-L, tiny")
    vid.add_argument(
        "--data", help="folder of videos (mp4, webm, avi, gif, ...) or frame folders: UCF-101 layout or plain"
    )
    vid.add_argument("--out", default="runs/video-tokenizer", help="run folder (checkpoints/, logs/, images/)")
    _add_run_flags(vid, precision="(the LFQ stays fp32)", steps="training steps (one G and one D update each)")
    vid.set_defaults(func=train_tokenizer, kind="video-tokenizer")

    ar = what.add_parser("ar", help="class-conditional AR model on token shards or images + a frozen tokenizer")
    ar.add_argument("--config", required=True, help="YAML file or preset (open-magvit2-ar-B, -L, -XL, ar-tiny)")
    ar.add_argument(
        "--data",
        help="token folder written by magvit2 encode, or an image folder tokenized on the fly with --tokenizer "
        "(class = the images' parent folder)",
    )
    ar.add_argument(
        "--tokenizer",
        help="frozen tokenizer (directory or checkpoint) for tokens on the fly; with token shards: the tokenizer "
        "that encoded them when it moved (checked against the config hash in tokens.json)",
    )
    ar.add_argument("--out", default="runs/ar", help="run folder (checkpoints/, logs/)")
    _add_run_flags(ar, precision="", steps="optimizer steps")
    ar.set_defaults(func=train_ar)
