"""`magvit2 info | export (alias convert) | reconstruct | encode`: the backends, checkpoints to our format, and a
tokenizer over image files."""

from __future__ import annotations

import argparse
import math

from magvit2.cli.args import MODEL_HELP, add_threads, bits, positive_int


def info(args: argparse.Namespace) -> int:
    import magvit2
    from magvit2.ops import backends

    print(f"magvit2 {magvit2.__version__}")
    for line in backends.info_lines():
        print(line)
    return 0


def export(args: argparse.Namespace) -> int:
    from magvit2.pipelines.convert import convert_checkpoint

    done = convert_checkpoint(
        args.checkpoint,
        args.outdir,
        use_ema=not args.no_ema,
        factorized_bits=args.factorized_bits,
        n_head=args.n_head,
        block_size=args.block_size,
    )
    if done.transformer is not None:
        t = done.transformer.config
        n = sum(p.numel() for p in done.transformer.parameters()) / 1e6
        print(
            f"AR transformer: dim={t.dim} heads={t.n_head} layers={t.spatial_n_layer}+{t.factorized_n_layer}, {n:.1f}M"
        )
        names = done.class_names
        if names is not None:
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            print(f"trained on {len(names)} of its {t.class_num} class ids: {shown}")
    c = done.tokenizer.config
    params = sum(p.numel() for p in done.tokenizer.parameters()) / 1e6
    print(
        f"{args.checkpoint}: {done.source} weights{' (AR first_stage_model)' if done.is_ar else ''}, "
        f"{done.num_tensors} tensors, {params:.2f}M parameters, {done.ignored} other keys ignored"
    )
    print(
        f"architecture: ch={c.ch} ch_mult={list(c.ch_mult)} num_res_blocks={c.num_res_blocks} "
        f"z_channels={c.z_channels} (f={c.downsample_factor}); factorized_bits={c.factorized_bits}"
    )
    print(f"wrote {args.outdir}")
    return 0


def _load_model(args: argparse.Namespace):
    from magvit2.checkpoints import load_checkpoint

    return load_checkpoint(args.model, device=args.device)


def reconstruct(args: argparse.Namespace) -> int:
    from magvit2.ops.threads import using_threads
    from magvit2.pipelines.reconstruct import reconstruct_files

    model = _load_model(args)
    with using_threads(args.threads, model):
        results = reconstruct_files(
            model,
            args.images,
            args.out,
            size=args.size,
            frames=args.frames,
            device=args.device,
            progress=not args.no_progress,
        )
    width = max(len(r.source) for r in results)
    for r in results:
        frames = f"{r.frames} frames " if hasattr(r, "frames") else ""
        grid = "x".join(map(str, r.grid))
        print(f"{r.source:<{width}}  {frames}{r.height}x{r.width}  tokens {grid}  PSNR {r.psnr:.2f} dB")
    finite = [r.psnr for r in results if math.isfinite(r.psnr)]
    kind = "video(s)" if results and hasattr(results[0], "frames") else "image(s)"
    if finite:
        print(f"mean PSNR {sum(finite) / len(finite):.2f} dB over {len(finite)} {kind}; outputs in {args.out}")
    return 0


def encode(args: argparse.Namespace) -> int:
    from magvit2.data.images import skipped_summary
    from magvit2.ops.threads import using_threads
    from magvit2.pipelines.encode import encode_folder

    model = _load_model(args)
    with using_threads(args.threads, model):
        summary = encode_folder(
            model,
            args.data,
            args.out,
            size=None if args.size == 0 else args.size,
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
    if summary.skipped:
        print(f"encoded {skipped_summary(summary.num_images, summary.skipped)}")
    return 0


def add_commands(commands) -> None:
    commands.add_parser("info", help="print which backend serves each op on each device type, and why").set_defaults(
        func=info
    )

    export_help = "checkpoint (official, or of magvit2 train) -> config.json + model.safetensors (+ the AR transformer)"
    exp = commands.add_parser("export", aliases=["convert"], help=export_help)
    exp.add_argument("checkpoint", help="tokenizer or AR checkpoint, official or ours (read with weights_only=True)")
    exp.add_argument("outdir", help="output model directory")
    exp.add_argument("--no-ema", action="store_true", help="take the raw weights, not the model_ema.* ones")
    exp.add_argument(
        "--factorized-bits",
        type=bits,
        default="auto",
        help="index groups, e.g. 6,12 or none (default: the stored config's; 6,12 for AR)",
    )
    exp.add_argument(
        "--n-head",
        type=int,
        help="AR checkpoints: attention heads (not in the weights; required unless the checkpoint is a released "
        "AR-B/L/XL or stores its config)",
    )
    exp.add_argument("--block-size", type=int, help="AR checkpoints: tokens per image (default 256)")
    exp.set_defaults(func=export)

    rec = commands.add_parser(
        "reconstruct", help="encode + decode images or videos; side-by-side PNGs (GIFs + frame strips) and PSNR"
    )
    rec.add_argument("--model", required=True, help=MODEL_HELP)
    rec.add_argument(
        "images",
        nargs="+",
        help="image files, or folders (searched recursively); with a video tokenizer: video files, frame folders, "
        "or folders of them",
    )
    rec.add_argument(
        "--out",
        required=True,
        help="new output folder for <name>.png (original | reconstruction); videos: <name>.gif and <name>_strip.png",
    )
    rec.add_argument(
        "--frames",
        type=positive_int,
        default=17,
        help="video tokenizer: at most this many frames from the start of each video (default 17)",
    )
    rec.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize shorter side + center crop to SIZE (default: native size cropped to the factor)",
    )
    rec.add_argument("--device", default="cpu")
    add_threads(rec)
    rec.add_argument("--no-progress", action="store_true", help="no progress bar")
    rec.set_defaults(func=reconstruct)

    enc = commands.add_parser("encode", help="a folder of images -> token shards for AR training")
    enc.add_argument("--model", required=True, help=MODEL_HELP)
    enc.add_argument("--data", required=True, help="image folder (searched recursively)")
    enc.add_argument("--out", required=True, help="new output folder (tokens.json + shard-*.safetensors)")
    enc.add_argument("--size", type=int, default=256, help="resize shorter side + center crop (0: native size)")
    enc.add_argument("--batch-size", type=int, default=16)
    enc.add_argument("--shard-size", type=int, default=4096, help="images per shard")
    enc.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for image decoding")
    enc.add_argument("--device", default="cpu")
    add_threads(enc)
    enc.add_argument("--no-progress", action="store_true", help="no progress bar")
    enc.set_defaults(func=encode)
