"""`magvit2 eval tokenizer`: PSNR, SSIM, LPIPS, rFID and codebook utilization of a tokenizer over an image folder."""

from __future__ import annotations

import argparse
import json

from magvit2.cli.args import MODEL_HELP, add_threads, positive_int


def eval_tokenizer(args: argparse.Namespace) -> int:
    from magvit2.checkpoints import load_checkpoint
    from magvit2.data.images import skipped_summary
    from magvit2.eval import evaluate_folder, write_report
    from magvit2.ops.threads import using_threads

    model = load_checkpoint(args.model, device=args.device)
    with using_threads(args.threads, model):
        metrics = evaluate_folder(
            model,
            args.data,
            size=args.size,
            batch_size=args.batch_size,
            limit=args.limit,
            inception=args.inception,
            lpips_backbone=args.lpips_backbone,
            lpips_heads=args.lpips_heads,
            workers=args.workers,
            device=args.device,
            progress=not args.no_progress,
        )
    write_report(metrics, metrics.counts, args.out)
    print(json.dumps(metrics.to_dict(), indent=2))
    print(f"evaluated {skipped_summary(metrics.num_images, metrics.skipped)}")
    print(f"wrote {args.out}/metrics.json and codebook_usage.png")
    return 0


def add_commands(commands) -> None:
    ev = commands.add_parser("eval", help="evaluate a model")
    ev_what = ev.add_subparsers(dest="what", required=True, metavar="MODEL")
    et = ev_what.add_parser("tokenizer", help="PSNR, SSIM, LPIPS, rFID, codebook utilization over an image folder")
    et.add_argument("--model", required=True, help=MODEL_HELP)
    et.add_argument("--data", required=True, help="image folder (searched recursively)")
    et.add_argument("--out", default="eval-out", help="folder for metrics.json and codebook_usage.png")
    et.add_argument("--size", type=int, default=256, help="resize shorter side + center crop")
    et.add_argument("--batch-size", type=int, default=8)
    et.add_argument("--limit", type=positive_int, default=None, help="first N images only")
    et.add_argument("--inception", help="pytorch-fid weights pt_inception-2015-12-05-6726825d.pth (enables rFID)")
    et.add_argument("--lpips-backbone", help="torchvision VGG16 weights file (enables LPIPS)")
    et.add_argument("--lpips-heads", default="auto", help="LPIPS head weights (default: the copy in torchmetrics)")
    et.add_argument("--workers", type=int, default=0)
    et.add_argument("--device", default="cpu")
    add_threads(et)
    et.add_argument("--no-progress", action="store_true")
    et.set_defaults(func=eval_tokenizer)
