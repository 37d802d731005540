"""Token shards for AR training: a folder of images -> `tokens.json` + `shard-00000.safetensors`, ...

Each shard holds one int32 tensor `indices` (n, h, w): the full LSB-first code index of every token (for a
factorized tokenizer, pre + 2^bits[0] * post; `TokenShards.split` recovers the groups), and the source file names
(relative to the data folder) in its metadata. `tokens.json` records the image size, token grid, preprocessing,
the tokenizer config and the shard list.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from magvit2.data.images import ImageFiles, list_images, usable_images

INDEX_NAME = "tokens.json"
FORMAT_NAME = "magvit2-tokens"
FORMAT_VERSION = 1


def join_groups(indices: torch.Tensor | tuple[torch.Tensor, ...], bits: Sequence[int] | None) -> torch.Tensor:
    """Group indices (LSB-first groups of `bits`) -> the full code index."""
    if not isinstance(indices, tuple):
        return indices
    full, shift = torch.zeros_like(indices[0]), 0
    for idx, b in zip(indices, bits, strict=True):
        full += idx << shift
        shift += b
    return full


class TokenShardWriter:
    """Accumulates (n, h, w) token batches and writes a shard every `shard_size` images."""

    def __init__(self, out_dir: str | os.PathLike, *, shard_size: int, meta: dict[str, Any]) -> None:
        self.out = Path(out_dir)
        if self.out.exists() and any(self.out.iterdir()):
            raise FileExistsError(f"output folder {self.out} is not empty; choose a new one")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.meta = shard_size, meta
        self.shards: list[dict[str, Any]] = []
        self._tokens: list[torch.Tensor] = []
        self._sources: list[str] = []
        self.count = 0

    def add(self, indices: torch.Tensor, sources: Sequence[str]) -> None:
        for row, source in zip(indices.to(torch.int32).cpu(), sources, strict=True):
            self._tokens.append(row)
            self._sources.append(source)
            if len(self._tokens) == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._tokens:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        save_file(
            {"indices": torch.stack(self._tokens)},
            str(self.out / name),
            metadata={"sources": json.dumps(self._sources)},
        )
        self.shards.append({"file": name, "count": len(self._tokens)})
        self.count += len(self._tokens)
        self._tokens, self._sources = [], []

    def close(self) -> Path:
        self._flush()
        index = {**self.meta, "num_images": self.count, "shards": self.shards}
        path = self.out / INDEX_NAME
        path.write_text(json.dumps(index, indent=2))
        return path


class EncodeSummary(NamedTuple):
    index: str  # path of tokens.json
    num_images: int
    grid: tuple[int, int]
    num_shards: int


@torch.inference_mode()
def shard_meta(model, *, preprocess: dict[str, Any], data: str, model_source: str | None) -> dict[str, Any]:
    """The index metadata of token shards encoded by `model` (a Tokenizer): format, bit order, codebook, token
    split, downsampling, preprocessing, data and model (the grid and image size are added once known)."""
    config = model.config
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dtype": "int32",
        "bit_order": "lsb-first",
        "codebook_size": config.codebook_size,
        "factorized_bits": None if config.factorized_bits is None else list(config.factorized_bits),
        "downsample_factor": model.downsample_factor,
        "preprocess": preprocess,
        "data": data,
        "model": model_source,
        "model_config": config.to_dict(),
    }


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
    be equal across the folder (all tokens of a shard share one grid).
    """
    from tqdm.auto import tqdm

    files = usable_images(list_images(data))
    root = Path(data)
    f = model.downsample_factor
    loader = torch.utils.data.DataLoader(
        ImageFiles(files, size=size, multiple_of=f), batch_size=batch_size, num_workers=workers, shuffle=False
    )
    config = model.config
    preprocess = {"resize": "shorter side, bilinear" if size else None, "crop": "center", "size": size}
    meta = shard_meta(model, preprocess=preprocess, data=str(root), model_source=model_source)
    writer: TokenShardWriter | None = None
    image_size: tuple[int, int] | None = None
    written: set[int] = set()
    bar = tqdm(total=len(files), unit="img", desc="encode", disable=not progress)
    try:
        for x, ids in loader:
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
            # a file that fails to decode is replaced by the next one (load_or_next): write each source once
            keep = [k for k, i in enumerate(ids.tolist()) if i not in written]
            written.update(ids[keep].tolist())
            _, indices = model.encode(x[keep].to(device))
            sources = [files[i].relative_to(root).as_posix() for i in ids[keep].tolist()]
            writer.add(join_groups(indices, config.factorized_bits), sources)
            bar.update(len(ids))
    except RuntimeError as e:
        if "stack expects each tensor to be equal size" in str(e):
            raise ValueError(f"images under {root} differ in size; pass a size to resize and crop them") from None
        raise
    finally:
        bar.close()
    index = writer.close()
    return EncodeSummary(str(index), writer.count, tuple(meta["grid"]), len(writer.shards))


class TokenShards(torch.utils.data.Dataset):
    """Reader of an `encode_folder` output: item i = (h, w) int64 token grid of image i.

    Example:
        >>> tokens = TokenShards("imagenet-tokens")  # doctest: +SKIP
        >>> pre, post = tokens.split(tokens[0])  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.dir = Path(directory)
        index = self.dir / INDEX_NAME
        if not index.is_file():
            raise FileNotFoundError(f"{index} not found: not a token folder written by `magvit2 encode`")
        self.meta = json.loads(index.read_text())
        if self.meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{index} is not a {FORMAT_NAME} index")
        self._shards, self.sources = [], []
        for shard in self.meta["shards"]:
            with safe_open(str(self.dir / shard["file"]), framework="pt") as f:
                self._shards.append(f.get_tensor("indices"))
                self.sources += json.loads(f.metadata()["sources"])
        self._all = torch.cat(self._shards) if self._shards else torch.empty(0, dtype=torch.int32)

    def __len__(self) -> int:
        return self._all.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._all[i].long()

    def load_all(self) -> torch.Tensor:
        """(N, h, w) int64."""
        return self._all.long()

    def split(self, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Full indices -> the factorized groups (e.g. (pre, post) for bits (6, 12))."""
        bits = self.meta.get("factorized_bits") or [self.meta["model_config"]["z_channels"]]
        groups, shift = [], 0
        for b in bits:
            groups.append((indices >> shift) & ((1 << b) - 1))
            shift += b
        return tuple(groups)
