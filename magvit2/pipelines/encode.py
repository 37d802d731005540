"""A folder of images -> token shards for AR training, behind `magvit2 encode`: the tokenizer runs over the images
(official preprocessing) and `magvit2.data.tokens` writes the shards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch

from magvit2.data.datasets import ImageFiles
from magvit2.data.images import list_images, scan_images
from magvit2.data.tokens import TokenShardWriter, pack_groups, shard_meta


class EncodeSummary(NamedTuple):
    index: str  # path of tokens.json
    num_images: int
    grid: tuple[int, int]
    num_shards: int
    skipped: list[str]  # "<path>: <why>" of every file not encoded (bad header or failed decode), in path order


def encode_folder(
    model,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int | None = 256,
    batch_size: int = 16,
    shard_size: int = 4096,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    model_source: str | None = None,
) -> EncodeSummary:
    """Stream every image under `data` through `model.encode` into token shards under `out`.

    size: resize the shorter side + center-crop (official preprocessing); None keeps native sizes, which must then
    be equal across the folder (all tokens of a shard share one grid). Files that cannot be read (a bad header or
    truncated data) are skipped, each readable image is written once, and the skipped ones are listed in the summary
    and in tokens.json (`skipped`).
    """
    from tqdm.auto import tqdm

    root = Path(data)
    files, skipped = scan_images(list_images(data))
    if not files:
        raise ValueError(f"none of the {len(skipped)} image files can be read: {'; '.join(skipped[:5])}")
    f = model.downsample_factor
    loader = torch.utils.data.DataLoader(
        ImageFiles(files, size=size, multiple_of=f),
        batch_size=batch_size,
        num_workers=workers,
        shuffle=False,
        collate_fn=ImageFiles.collate,
    )
    config = model.config
    preprocess = {"resize": "shorter side, bilinear" if size else None, "crop": "center", "size": size}
    meta = shard_meta(model, preprocess=preprocess, data=str(root), model_source=model_source)
    writer: TokenShardWriter | None = None
    image_size: tuple[int, int] | None = None
    bar = tqdm(total=len(files), unit="img", desc="encode", disable=not progress)
    try:
        for x, ids, failed in loader:
            skipped += failed
            bar.update(len(ids) + len(failed))
            if x is None:  # every file of the batch failed to decode
                continue
            if image_size is None:
                image_size = tuple(x.shape[-2:])
                grid = (image_size[0] // f, image_size[1] // f)
                meta.update(image_size=list(image_size), grid=list(grid))
                writer = TokenShardWriter(out, shard_size=shard_size, meta=meta)
            elif tuple(x.shape[-2:]) != image_size:
                odd = files[ids[0].item()]
                raise ValueError(
                    f"{odd} gives a {x.shape[-2]}x{x.shape[-1]} image, others {image_size[0]}x{image_size[1]}: "
                    "images differ in size; pass a size to resize and crop them"
                )
            _, indices = model.encode(x.to(device))
            sources = [files[i].relative_to(root).as_posix() for i in ids.tolist()]
            writer.add(pack_groups(indices, config.factorized_bits), sources)
    except RuntimeError as e:
        if "stack expects each tensor to be equal size" in str(e):
            raise ValueError(f"images under {root} differ in size; pass a size to resize and crop them") from None
        raise
    finally:
        bar.close()
    skipped = sorted(skipped, key=lambda reason: reason.split(": ")[0])  # header and decode failures, path order
    if writer is None:
        raise ValueError(f"none of the {len(skipped)} image files can be read: {'; '.join(skipped[:5])}")
    writer.meta["skipped"] = skipped
    index = writer.close()
    return EncodeSummary(str(index), writer.count, tuple(meta["grid"]), len(writer.shards), skipped)
