"""`magvit2 sample`: class-conditional images from an AR model, as a PNG grid or an ADM-layout .npz."""

from __future__ import annotations

import argparse

from magvit2.cli.args import add_threads, floats, ints


def _classes(text: str, n_classes: int, names: list[str] | None = None) -> list[int]:
    """Class ids of --classes: 'all' (the trained classes when the model stores their names, else every id), or
    comma-separated ids and, when names are stored, names (a name wins over an id of the same spelling)."""
    if names is not None:  # only the first len(names) ids were trained
        n_classes = len(names)
    if text == "all":
        return list(range(n_classes))
    index = {name: i for i, name in enumerate(names or [])}
    classes = []
    for item in (t.strip() for t in text.split(",")):
        if item in index:
            classes.append(index[item])
            continue
        try:
            classes.append(int(item))
        except ValueError:
            if names is None:
                raise ValueError(f"--classes: expected comma-separated class ids or 'all', got {text!r}") from None
            raise ValueError(f"--classes: unknown class {item!r}; the model's classes are {_listing(names)}") from None
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad:
        trained = f" (the model's classes: {_listing(names)})" if names is not None else ""
        raise ValueError(f"--classes: ids must lie in [0, {n_classes}){trained}, got {bad}")
    return classes


def _listing(names: list[str], show: int = 10) -> str:
    shown = ", ".join(f"{i}: {name}" for i, name in enumerate(names[:show]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > show else "")


def sample(args: argparse.Namespace) -> int:
    from magvit2.checkpoints import load_ar_model
    from magvit2.ops.threads import using_threads
    from magvit2.pipelines.sample import check_samples_path, sample_images, write_samples

    check_samples_path(args.out)  # before minutes of sampling
    for flag, value in (("--per-class", args.per_class), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    transformer, tokenizer, names = load_ar_model(args.model, device=args.device, n_head=args.n_head)
    classes = _classes(args.classes, transformer.config.class_num, names)
    with using_threads(args.threads, transformer, tokenizer):
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
    out = write_samples(images, labels, args.out, per_row=args.per_class, class_names=names)
    print(f"{len(images)} images ({len(classes)} classes x {args.per_class}) -> {out}")
    return 0


def add_commands(commands) -> None:
    s = commands.add_parser("sample", help="class-conditional images from an AR model: PNG grid or ADM .npz")
    s.add_argument("--model", required=True, help="official AR .ckpt or a directory from magvit2 export")
    s.add_argument(
        "--classes",
        required=True,
        help="comma-separated class ids or names (models that store their classes' names), or 'all' (the trained "
        "classes when stored, else every id)",
    )
    s.add_argument(
        "--n-head",
        type=int,
        help="official .ckpt of a width other than AR-B/L/XL: its attention heads (not in the weights; required)",
    )
    s.add_argument("--per-class", type=int, default=1, help="images per class")
    s.add_argument("--out", required=True, help="grid.png or samples.npz (uint8 NHWC arr_0, labels arr_1)")
    s.add_argument("--cfg", type=floats, default=(1.9, 2.0), help="guidance scale pre,post (default 1.9,2.0: B)")
    s.add_argument("--temperature", type=floats, default=(1.0, 1.0), help="pre,post (default 1.0,1.0)")
    s.add_argument("--top-k", type=ints, default=(0, 0), help="pre,post; 0 = off")
    s.add_argument("--top-p", type=floats, default=(1.0, 1.0), help="pre,post; 1 = off")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--batch-size", type=int, default=50)
    s.add_argument("--device", default="cpu")
    add_threads(s)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=sample)
