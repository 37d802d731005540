"""Token shards for AR training (`tokens.json` + `shard-00000.safetensors`, ...), and the one packing of factorized
group indices into full code indices and back.

Each shard holds one int32 tensor `indices` (n, h, w): the full LSB-first code index of every token (for a
factorized tokenizer, pre + 2^bits[0] * post; `TokenShards.split` recovers the groups), and the source file names
(relative to the data folder) in its metadata. `tokens.json` records the image size, token grid, preprocessing,
the tokenizer config, the shard list and `class_names`: the sorted parent-folder names of the sources, the class of
id i being class_names[i] (the AR trainer's ids; folders written before this key existed give the same names from
the sources). `model` is the tokenizer's absolute path and `model_config_sha256` the hash of its config
(`config_sha256`), which the AR trainer checks against the tokenizer it loads.

`TokenShards` checks a folder before using it: every shard named in tokens.json lies inside the folder, holds integer
indices (int32 as written; int64 read too) of shape (count, *grid) with values in [0, codebook_size), one source name
per row, and the counts add up to `num_images`; `factorized_bits` sum to the codebook's bits. Each failure is a
one-line ValueError naming the file and field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from magvit2.data.images import folder_class, folder_labels

INDEX_NAME = "tokens.json"
FORMAT_NAME = "magvit2-tokens"
FORMAT_VERSION = 1


def pack_groups(indices: torch.Tensor | Sequence[torch.Tensor], bits: Sequence[int] | None) -> torch.Tensor:
    """Group indices -> the full code index: a plain index tensor as it is; groups (g0, g1, ...) of `bits` = (b0, b1,
    ...) as sum g_i << (b0 + ... + b_{i-1}), int64. The groups split the code bits LSB-first (group 0 holds bits
    0..b0-1, group 1 the next b1 bits, ...), so this is exactly the index the unfactorized quantizer gives for the
    same code (Open-MAGVIT2's AR split (6, 12): pre + 64 post)."""
    if isinstance(indices, torch.Tensor):
        return indices
    groups = list(indices)
    if bits is None or len(list(bits)) != len(groups):
        raise ValueError(f"pack_groups: got {len(groups)} index groups but factorized_bits is {bits}")
    full, shift = torch.zeros_like(groups[0], dtype=torch.int64), 0
    for idx, b in zip(groups, bits, strict=True):
        full += idx.long() << shift
        shift += int(b)
    return full


def unpack_groups(full: torch.Tensor, bits: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The full code index -> its LSB-first groups of `bits` (the inverse of `pack_groups`)."""
    groups, shift = [], 0
    for b in bits:
        groups.append((full >> shift) & ((1 << int(b)) - 1))
        shift += int(b)
    return tuple(groups)


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
        self._folders: set[str] = set()  # of every source written: the class names
        self.count = 0

    def add(self, indices: torch.Tensor, sources: Sequence[str]) -> None:
        for row, source in zip(indices.to(torch.int32).cpu(), sources, strict=True):
            self._tokens.append(row)
            self._sources.append(source)
            self._folders.add(folder_class(source))
            if len(self._tokens) == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save

        if not self._tokens:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        # written as bytes with open(): the file gets the umask's mode (safetensors' save_file makes it 0600)
        data = save({"indices": torch.stack(self._tokens)}, metadata={"sources": json.dumps(self._sources)})
        (self.out / name).write_bytes(data)
        self.shards.append({"file": name, "count": len(self._tokens)})
        self.count += len(self._tokens)
        self._tokens, self._sources = [], []

    def close(self) -> Path:
        self._flush()
        names = sorted(self._folders)  # the order of folder_labels: id i = names[i]
        index = {**self.meta, "num_images": self.count, "class_names": names, "shards": self.shards}
        path = self.out / INDEX_NAME
        path.write_text(json.dumps(index, indent=2))
        return path


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of a config dict as canonical JSON (sorted keys, no spaces): tuples and lists hash alike, so the config
    read back from tokens.json hashes as the tokenizer's own `config.to_dict()`."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def shard_meta(model, *, preprocess: dict[str, Any], data: str, model_source: str | None) -> dict[str, Any]:
    """The index metadata of token shards encoded by `model` (a Tokenizer): format, bit order, codebook, token
    split, downsampling, preprocessing, data and model: its absolute path (so training from another directory
    finds it) and the hash of its config (the grid and image size are added once known)."""
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
        "model": None if model_source is None else os.path.abspath(model_source),
        "model_config": config.to_dict(),
        "model_config_sha256": config_sha256(config.to_dict()),
    }


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
        try:
            self.meta = json.loads(index.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{index}: not valid JSON ({e})") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{index} is not a {FORMAT_NAME} index")
        grid, codebook_size = self._check_index(index)
        self._shards, self.sources = [], []
        inside = self.dir.resolve()
        for k, shard in enumerate(self.meta["shards"]):
            name = shard.get("file") if isinstance(shard, dict) else None
            field = f"{index}: shards[{k}].file"
            if not isinstance(name, str) or not name:
                raise ValueError(f"{field} must be a file name, got {name!r}")
            path = self.dir / name
            if Path(name).is_absolute() or inside not in path.resolve().parents:
                raise ValueError(f"{field} {name!r} lies outside {self.dir}: expected a file name inside the folder")
            if not path.is_file():
                raise FileNotFoundError(f"{field}: {path} not found")
            try:
                with safe_open(str(path), framework="pt") as f:
                    tensor = f.get_tensor("indices") if "indices" in f.keys() else None
                    sources = json.loads((f.metadata() or {}).get("sources", "null"))
            except Exception as e:  # any: a corrupt file, whatever the reader raises
                raise ValueError(f"{path}: not a readable token shard ({type(e).__name__}: {e})") from None
            self._check_shard(path, shard, tensor, sources, grid, codebook_size)
            self._shards.append(tensor)
            self.sources += sources
        self._all = torch.cat(self._shards) if self._shards else torch.empty(0, dtype=torch.int32)
        if len(self._all) != self.meta["num_images"]:
            raise ValueError(
                f"{index}: num_images is {self.meta['num_images']} but the shards hold {len(self._all)} token grids"
            )

    def _check_index(self, index: Path) -> tuple[list[int], int]:
        """The fields every reader relies on, each of the expected type: (grid, codebook_size)."""
        meta = self.meta
        if not isinstance(meta.get("shards"), list):
            raise ValueError(f"{index}: shards must be a list of {{file, count}}, got {meta.get('shards')!r}")
        if not isinstance(meta.get("num_images"), int) or meta["num_images"] < 0:
            raise ValueError(f"{index}: num_images must be an int >= 0, got {meta.get('num_images')!r}")
        grid = meta.get("grid")
        if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
            raise ValueError(f"{index}: grid must be [h, w] of positive ints, got {grid!r}")
        size = meta.get("codebook_size")
        if not isinstance(size, int) or size < 2 or size & (size - 1):
            raise ValueError(f"{index}: codebook_size must be a power of two >= 2, got {size!r}")
        bits = meta.get("factorized_bits")
        if bits is not None and (
            not isinstance(bits, list) or not all(isinstance(b, int) and b > 0 for b in bits) or 2 ** sum(bits) != size
        ):
            raise ValueError(
                f"{index}: factorized_bits must be positive ints summing to log2(codebook_size) = "
                f"{int(math.log2(size))}, got {bits!r}"
            )
        z = (meta.get("model_config") or {}).get("z_channels")
        if isinstance(z, int) and 2**z != size:
            raise ValueError(f"{index}: codebook_size is {size} but model_config.z_channels is {z} (2^{z} codes)")
        if meta.get("dtype", "int32") not in ("int32", "int64"):
            raise ValueError(f"{index}: dtype must be int32 (or int64), got {meta.get('dtype')!r}")
        return grid, size

    @staticmethod
    def _check_shard(path: Path, shard: dict, tensor, sources, grid: list[int], codebook_size: int) -> None:
        """One shard against its index entry: integer indices (n, *grid) in [0, codebook_size), n sources."""
        if tensor is None:
            raise ValueError(f"{path}: no tensor 'indices'")
        if tensor.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{path}: indices are {tensor.dtype}, expected int32 (or int64) code indices")
        if tensor.dim() != 3 or list(tensor.shape[1:]) != grid:
            raise ValueError(f"{path}: indices have shape {tuple(tensor.shape)}, expected (n, {grid[0]}, {grid[1]})")
        if shard.get("count") != tensor.shape[0]:
            raise ValueError(f"{path}: holds {tensor.shape[0]} token grids but its count is {shard.get('count')!r}")
        if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= codebook_size):
            raise ValueError(
                f"{path}: indices span [{int(tensor.min())}, {int(tensor.max())}], "
                f"expected [0, {codebook_size}) (codebook_size)"
            )
        if not isinstance(sources, list) or len(sources) != tensor.shape[0]:
            got = len(sources) if isinstance(sources, list) else "no"
            raise ValueError(f"{path}: metadata 'sources' names {got} files, expected {tensor.shape[0]}")

    @property
    def class_names(self) -> list[str]:
        """Class names in id order: stored in tokens.json, else (older folders) the sorted parent-folder names of
        the sources, the same list."""
        stored = self.meta.get("class_names")
        return list(stored) if stored is not None else folder_labels(self.sources)[0]

    def class_ids(self) -> torch.Tensor:
        """(N,) int64 class id of each image: the position of its source's parent folder in `class_names`."""
        return folder_labels(self.sources, self.class_names)[1]

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
        return unpack_groups(indices, bits)
