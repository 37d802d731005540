"""Command-line entry point: `magvit2 <command>`. Thin: parses arguments and calls into the package."""

from __future__ import annotations

import argparse
import math
import sys


def _info(args: argparse.Namespace) -> int:
    import magvit2
    from magvit2.ops import backends

    print(f"magvit2 {magvit2.__version__}")
    for line in backends.info_lines():
        print(line)
    return 0


def _bits(text: str) -> tuple[int, ...] | str | None:
    if text.lower() in ("none", "auto"):
        return None if text.lower() == "none" else "auto"
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 6,12 or 'none', got {text!r}") from None


def _load_model(args: argparse.Namespace):
    from magvit2.nn import load_checkpoint

    return load_checkpoint(args.model, device=args.device)


def _convert(args: argparse.Namespace) -> int:
    from magvit2.nn.checkpoint import (
        _extract_state_dict,
        map_official_state_dict,
        safe_torch_load,
        tokenizer_from_state,
    )

    # read the file once: AR checkpoints (GBs) give both the tokenizer and the transformer
    raw = safe_torch_load(args.checkpoint)
    sd = _extract_state_dict(raw, args.checkpoint)
    loaded = map_official_state_dict(sd, use_ema=not args.no_ema)
    overrides = {} if args.factorized_bits == "auto" else {"factorized_bits": args.factorized_bits}
    transformer = None
    if loaded.is_ar:
        from magvit2.nn.ar_checkpoint import save_ar_pretrained, stored_ar_fields, transformer_from_state

        # heads and grid: the flags, else the config our AR trainer stored in the checkpoint, else inferred
        ar_overrides = stored_ar_fields(raw)
        ar_overrides.update({k: v for k, v in (("n_head", args.n_head), ("block_size", args.block_size)) if v})
        transformer = transformer_from_state(sd, args.checkpoint, **ar_overrides)
        overrides.setdefault("factorized_bits", transformer.config.factorized_bits)  # the transformer's split
    model = tokenizer_from_state(loaded, args.checkpoint, **overrides)
    model.save_pretrained(args.outdir)
    if transformer is not None:
        save_ar_pretrained(transformer, args.outdir)
        t = transformer.config
        n = sum(p.numel() for p in transformer.parameters()) / 1e6
        print(
            f"AR transformer: dim={t.dim} heads={t.n_head} layers={t.spatial_n_layer}+{t.factorized_n_layer}, {n:.1f}M"
        )
    c = model.config
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"{args.checkpoint}: {loaded.source} weights{' (AR first_stage_model)' if loaded.is_ar else ''}, "
        f"{len(loaded.state_dict)} tensors, {params:.2f}M parameters, {len(loaded.ignored)} other keys ignored"
    )
    print(
        f"architecture: ch={c.ch} ch_mult={list(c.ch_mult)} num_res_blocks={c.num_res_blocks} "
        f"z_channels={c.z_channels} (f={c.downsample_factor}); factorized_bits={c.factorized_bits}"
    )
    print(f"wrote {args.outdir}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from magvit2.data import reconstruct_files

    model = _load_model(args)
    results = reconstruct_files(model, args.images, args.out, size=args.size, device=args.device)
    width = max(len(r.source) for r in results)
    for r in results:
        print(f"{r.source:<{width}}  {r.height}x{r.width}  tokens {r.grid[0]}x{r.grid[1]}  PSNR {r.psnr:.2f} dB")
    finite = [r.psnr for r in results if math.isfinite(r.psnr)]
    if finite:
        print(f"mean PSNR {sum(finite) / len(finite):.2f} dB over {len(finite)} image(s); images in {args.out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from magvit2.data import encode_folder

    model = _load_model(args)
    size = None if args.size == 0 else args.size
    summary = encode_folder(
        model,
        args.data,
        args.out,
        size=size,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
        model_source=str(args.model),
    )
    print(
        f"encoded {summary.num_images} images to {summary.grid[0]}x{summary.grid[1]} tokens in "
        f"{summary.num_shards} shard(s); index {summary.index}"
    )
    return 0


RUN_FLAGS = (("devices", "trainer.devices"), ("num_nodes", "trainer.num_nodes"), ("max_steps", "trainer.max_steps"),
             ("accelerator", "trainer.accelerator"), ("precision", "trainer.precision"))  # fmt: skip


def _run_overrides(args: argparse.Namespace, data_key: str) -> list[str]:
    """--set values, then --data and the run flags given on the command line, as section.key=value overrides."""
    overrides = list(args.set or [])
    if args.data is not None:
        overrides.append(f"{data_key}={args.data}")
    overrides += [f"{key}={getattr(args, flag)}" for flag, key in RUN_FLAGS if getattr(args, flag) is not None]
    return overrides


def _train_tokenizer(args: argparse.Namespace) -> int:
    from magvit2.train.config import load_config
    from magvit2.train.run import fit_tokenizer

    config = load_config(args.config, _run_overrides(args, "data.train"))
    trainer, module = fit_tokenizer(config, args.out, resume=args.resume, progress=not args.no_progress)
    if trainer.is_global_zero:
        print(f"trained {module.batch_step} steps; checkpoints in {args.out}/checkpoints (last.ckpt)")
    return 0


def _train_ar(args: argparse.Namespace) -> int:
    from magvit2.train.ar import fit_ar, load_ar_config

    # --data names token shards or, with --tokenizer, images to tokenize on the fly
    overrides = _run_overrides(args, "data.tokens" if args.tokenizer is None else "data.images")
    if args.tokenizer is not None:
        overrides.append(f"data.tokenizer={args.tokenizer}")
    config = load_ar_config(args.config, overrides)
    trainer, module = fit_ar(config, args.out, resume=args.resume, progress=not args.no_progress)
    if trainer.is_global_zero:
        print(f"trained {module.global_step} steps; checkpoints in {args.out}/checkpoints (last.ckpt)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from magvit2.train.export import export_checkpoint

    model, source = export_checkpoint(args.checkpoint, args.outdir, use_ema=not args.no_ema)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.checkpoint}: {source} weights, {params:.2f}M parameters -> {args.outdir}")
    return 0


def _eval_tokenizer(args: argparse.Namespace) -> int:
    import json

    from torch.utils.data import DataLoader

    from magvit2.data import ImageFiles, list_images
    from magvit2.eval import InceptionV3FID, evaluate_tokenizer, write_report

    model = _load_model(args)
    files = list_images(args.data)[: args.limit]
    dataset = ImageFiles(files, size=args.size, multiple_of=model.downsample_factor)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    inception = InceptionV3FID.from_file(args.inception).to(args.device).eval() if args.inception else None
    lpips = None
    if args.lpips_backbone:
        from magvit2.nn.lpips import LPIPS

        lpips = LPIPS(backbone=args.lpips_backbone, heads=args.lpips_heads).to(args.device).eval()
    metrics = evaluate_tokenizer(
        model, loader, inception=inception, lpips=lpips, device=args.device, progress=not args.no_progress
    )
    write_report(metrics, metrics.counts, args.out)
    print(json.dumps(metrics.to_dict(), indent=2))
    print(f"wrote {args.out}/metrics.json and codebook_usage.png")
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.what == "tokenizer":
        from magvit2.train.demo import run_demo, summary

        metrics = run_demo(args.out, steps=args.steps, overrides=args.set or [], progress=not args.no_progress)
        print(summary(metrics, args.out))
        return 0
    from magvit2.train.demo_digits import SampleSettings, run_digits_demo
    from magvit2.train.demo_digits import summary as digits_summary

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
        threads=args.threads,
        progress=not args.no_progress,
    )
    print(digits_summary(metrics, args.out))
    return 0


def _floats(text: str) -> tuple[float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or two like 1.9,2.0, got {text!r}") from None
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected one value or a pair (pre, post), got {text!r}")
    return (values[0], values[-1])


def _ints(text: str) -> tuple[int, int]:
    a, b = _floats(text)
    if a != int(a) or b != int(b):
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}")
    return (int(a), int(b))


def _sample(args: argparse.Namespace) -> int:
    from magvit2.data.samples import sample_images, write_samples
    from magvit2.nn.ar_checkpoint import load_ar_checkpoint

    transformer, tokenizer = load_ar_checkpoint(args.model, device=args.device)
    n_classes = transformer.config.class_num
    if args.classes == "all":
        classes = list(range(n_classes))
    else:
        try:
            classes = [int(c) for c in args.classes.split(",")]
        except ValueError:
            raise ValueError(f"--classes: expected comma-separated class ids or 'all', got {args.classes!r}") from None
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"--classes: ids must lie in [0, {n_classes}), got {bad}")
    images, labels = sample_images(
        transformer,
        tokenizer,
        classes,
        per_class=args.per_class,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
        cfg=args.cfg,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
    )
    out = write_samples(images, labels, args.out, per_row=args.per_class)
    print(f"{len(images)} images ({len(classes)} classes x {args.per_class}) -> {out}")
    return 0


def _add_run_flags(parser: argparse.ArgumentParser, *, precision: str, steps: str) -> None:
    """The flags every `magvit2 train` command shares (see RUN_FLAGS for the config keys they set)."""
    parser.add_argument("--resume", help="checkpoint to continue from, or 'auto' (OUT/checkpoints/last.ckpt if any)")
    parser.add_argument("--devices", help="devices per node (int or 'auto')")
    parser.add_argument("--num-nodes", type=int, help="nodes; set MASTER_ADDR, MASTER_PORT, NODE_RANK on each")
    parser.add_argument("--accelerator", help="cpu, gpu, npu or auto")
    parser.add_argument("--precision", help=f"32-true, bf16-mixed or 16-mixed {precision}".strip())
    parser.add_argument("--max-steps", type=int, help=steps)
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    parser.add_argument("--no-progress", action="store_true")


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a model on Lightning (single device, DDP, multi-node)")
    what = train.add_subparsers(dest="what", required=True, metavar="MODEL")
    tok = what.add_parser("tokenizer", help="tokenizer: GAN + perceptual + LFQ losses, EMA; checkpoints + logs")
    tok.add_argument(
        "--config", required=True, help="YAML file or preset: open-magvit2-256-L, open-magvit2-128-L, tiny"
    )
    tok.add_argument("--data", help="image folder: ImageNet layout (train/ and val/) or a plain folder")
    tok.add_argument("--out", default="runs/tokenizer", help="run folder (checkpoints/, logs/, images/)")
    _add_run_flags(tok, precision="(the LFQ stays fp32)", steps="training steps (one G and one D update each)")
    tok.set_defaults(func=_train_tokenizer)

    ar = what.add_parser("ar", help="class-conditional AR model on token shards or images + a frozen tokenizer")
    ar.add_argument("--config", required=True, help="YAML file or preset (open-magvit2-ar-B, -L, -XL, ar-tiny)")
    ar.add_argument(
        "--data",
        help="token folder written by magvit2 encode, or an image folder tokenized on the fly with --tokenizer "
        "(class = the images' parent folder)",
    )
    ar.add_argument("--tokenizer", help="frozen tokenizer (directory or checkpoint) for tokens on the fly")
    ar.add_argument("--out", default="runs/ar", help="run folder (checkpoints/, logs/)")
    _add_run_flags(ar, precision="", steps="optimizer steps")
    ar.set_defaults(func=_train_ar)

    export = commands.add_parser("export", help="training .ckpt -> config.json + model.safetensors (EMA weights)")
    export.add_argument("checkpoint", help="checkpoint written by magvit2 train tokenizer (or an official one)")
    export.add_argument("outdir")
    export.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA ones")
    export.set_defaults(func=_export)

    ev = commands.add_parser("eval", help="evaluate a model")
    ev_what = ev.add_subparsers(dest="what", required=True, metavar="MODEL")
    et = ev_what.add_parser("tokenizer", help="PSNR, SSIM, LPIPS, rFID, codebook utilization over an image folder")
    et.add_argument("--model", required=True, help="model directory or checkpoint")
    et.add_argument("--data", required=True, help="image folder (searched recursively)")
    et.add_argument("--out", default="eval-out", help="folder for metrics.json and codebook_usage.png")
    et.add_argument("--size", type=int, default=256, help="resize shorter side + center crop")
    et.add_argument("--batch-size", type=int, default=8)
    et.add_argument("--limit", type=int, default=None, help="first N images only")
    et.add_argument("--inception", help="pytorch-fid weights pt_inception-2015-12-05-6726825d.pth (enables rFID)")
    et.add_argument("--lpips-backbone", help="torchvision VGG16 weights file (enables LPIPS)")
    et.add_argument("--lpips-heads", default="auto", help="LPIPS head weights (default: the copy in torchmetrics)")
    et.add_argument("--workers", type=int, default=0)
    et.add_argument("--device", default="cpu")
    et.add_argument("--no-progress", action="store_true")
    et.set_defaults(func=_eval_tokenizer)

    sample = commands.add_parser("sample", help="class-conditional images from an AR model: PNG grid or ADM .npz")
    sample.add_argument("--model", required=True, help="official AR .ckpt or a directory from magvit2 convert")
    sample.add_argument("--classes", required=True, help="comma-separated class ids, or 'all'")
    sample.add_argument("--per-class", type=int, default=1, help="images per class")
    sample.add_argument("--out", required=True, help="grid.png or samples.npz (uint8 NHWC arr_0, labels arr_1)")
    sample.add_argument("--cfg", type=_floats, default=(1.9, 2.0), help="guidance scale pre,post (default 1.9,2.0: B)")
    sample.add_argument("--temperature", type=_floats, default=(1.0, 1.0), help="pre,post (default 1.0,1.0)")
    sample.add_argument("--top-k", type=_ints, default=(0, 0), help="pre,post; 0 = off")
    sample.add_argument("--top-p", type=_floats, default=(1.0, 1.0), help="pre,post; 1 = off")
    sample.add_argument("--seed", type=int, default=42)
    sample.add_argument("--batch-size", type=int, default=50)
    sample.add_argument("--device", default="cpu")
    sample.add_argument("--no-progress", action="store_true")
    sample.set_defaults(func=_sample)

    demo = commands.add_parser(
        "demo", help="digits (default): tokenizer + class-conditional AR on sklearn digits, scored; or tokenizer"
    )
    demo.add_argument(
        "what",
        nargs="?",
        default="digits",
        choices=["digits", "tokenizer"],
        help="digits: the generation pipeline (the main job); tokenizer: the tiny tokenizer on bundled photographs",
    )
    demo.add_argument("--out", default="demo-out")
    demo.add_argument("--steps", type=int, default=None, help="tokenizer demo: training steps (default: the preset's)")
    demo.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a tokenizer-config value")
    digits = demo.add_argument_group("digits")
    digits.add_argument("--tokenizer-steps", type=int, help="tokenizer training steps (default: the digits config's)")
    digits.add_argument("--ar-steps", type=int, help="AR training steps (default: the ar-digits config's)")
    digits.add_argument("--ar-set", action="append", metavar="SECTION.KEY=VALUE", help="override an ar-digits value")
    digits.add_argument("--per-class", type=int, default=20, help="samples per class (default 20)")
    digits.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (default 3.0)")
    digits.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    digits.add_argument("--seed", type=int, default=0, help="sampling seed (training seeds: the configs')")
    digits.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: see magvit2.train.demo_digits)"
    )
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magvit2", description="Open-MAGVIT2 tokenizer and AR generation.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="print which backend serves each op on each device type, and why")
    info.set_defaults(func=_info)

    convert = commands.add_parser("convert", help="official Lightning .ckpt -> config.json + model.safetensors")
    convert.add_argument("checkpoint", help="official tokenizer or AR checkpoint (read with weights_only=True)")
    convert.add_argument("outdir", help="output model directory")
    convert.add_argument("--no-ema", action="store_true", help="take the raw weights, not the model_ema.* ones")
    convert.add_argument(
        "--factorized-bits", type=_bits, default="auto", help="index groups, e.g. 6,12 or none (default: 6,12 for AR)"
    )
    convert.add_argument("--n-head", type=int, help="AR checkpoints: attention heads (default: from the width)")
    convert.add_argument("--block-size", type=int, help="AR checkpoints: tokens per image (default 256)")
    convert.set_defaults(func=_convert)

    model_help = "model directory (magvit2 convert / save_pretrained) or an official .ckpt"
    rec = commands.add_parser("reconstruct", help="encode + decode images; side-by-side PNGs and per-image PSNR")
    rec.add_argument("--model", required=True, help=model_help)
    rec.add_argument("images", nargs="+", help="image files")
    rec.add_argument("--out", required=True, help="output folder for <name>.png (original | reconstruction)")
    rec.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize shorter side + center crop to SIZE (default: native size cropped to the factor)",
    )
    rec.add_argument("--device", default="cpu")
    rec.set_defaults(func=_reconstruct)

    enc = commands.add_parser("encode", help="a folder of images -> token shards for AR training")
    enc.add_argument("--model", required=True, help=model_help)
    enc.add_argument("--data", required=True, help="image folder (searched recursively)")
    enc.add_argument("--out", required=True, help="new output folder (tokens.json + shard-*.safetensors)")
    enc.add_argument("--size", type=int, default=256, help="resize shorter side + center crop (0: native size)")
    enc.add_argument("--batch-size", type=int, default=16)
    enc.add_argument("--shard-size", type=int, default=4096, help="images per shard")
    enc.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for image decoding")
    enc.add_argument("--device", default="cpu")
    enc.add_argument("--no-progress", action="store_true", help="no progress bar")
    enc.set_defaults(func=_encode)
    _add_train(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # user errors: one line, no traceback
        print(f"magvit2 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
