"""Weight files, safely: the safe `torch.load`, our safetensors format folder, and the checks that fit a state dict to a
module. Shared by our format (`Tokenizer.from_pretrained`), LPIPS and the foreign-format loaders (magvit2/checkpoints);
imports no model module.

Safety: files are read with `torch.load(weights_only=True)`; pickled code is never executed. A file whose pickle
names globals outside torch's allowlist is refused with their names, except for known training metadata (numpy
scalars, pathlib paths, omegaconf/Lightning objects in `hyper_parameters` or `callbacks`): those are rebuilt as inert
placeholders that run no code, and nothing from them is used.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import torch

MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and the keys."""


def listing(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:  # keep torch's reason, drop its advice to load without weights_only
        text = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
    text = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {text[:200]}"


def check_state_dict(model: torch.nn.Module, sd: dict[str, Any], origin: str, what: str = "the tokenizer") -> None:
    """Raise CheckpointError listing missing, unexpected, non-tensor and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    not_tensor = [k for k in sd if k in expected and not isinstance(sd[k], torch.Tensor)]
    shaped = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sd
        if k in expected and isinstance(sd[k], torch.Tensor) and sd[k].shape != expected[k].shape
    ]
    problems = [
        f"{label}: {listing(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("not tensors", not_tensor),
            ("mis-shaped", shaped),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(f"{origin} does not fit {what}: " + "; ".join(problems))


def build_module(
    factory: Callable[[], torch.nn.Module],
    sd: dict[str, Any],
    origin: str,
    device: str | torch.device = "cpu",
    *,
    what: str = "the tokenizer",
) -> Any:
    """`factory()` built on the meta device (no random init), checked against `sd`, then given float32 copies of its
    tensors on `device`; returned in eval mode."""
    with torch.device("meta"):
        model = factory()
    check_state_dict(model, sd, origin, what)
    state = {k: v.to(device=device, dtype=torch.float32).contiguous() for k, v in sd.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights not found: {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated?): {_first_line(e)}") from None


def write_format_dir(
    directory: str | os.PathLike,
    config_name: str,
    weights_name: str,
    meta: dict[str, Any],
    module: torch.nn.Module,
) -> None:
    """Our format: `config_name` (JSON of `meta`, which carries "format" and "format_version") and `weights_name`
    (the module's state dict as contiguous CPU tensors in safetensors); the writer of `read_format_json`."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, config_name), "w") as f:
        json.dump(meta, f, indent=2)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    path = os.path.join(directory, weights_name)
    save_file(state, path, metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~_umask())  # safetensors writes 0600; a weight file is as readable as its JSON beside it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_format_json(path: str, format_name: str, format_version: int, hint: str) -> dict[str, Any]:
    """A `config.json` of our format without its "format"/"format_version" marks; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {hint}")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.pop("format", None) != format_name:
        raise CheckpointError(f'{path} is not a {format_name} config (no "format": "{format_name}")')
    version = meta.pop("format_version", None)
    if not isinstance(version, int) or version > format_version:
        raise CheckpointError(f"{path}: format_version {version!r} is not supported (this magvit2 reads <= 1)")
    return meta


# Globals that Lightning/omegaconf put in training metadata. They become _Inert placeholders (no code runs).
METADATA_MODULES = (
    "numpy.",
    "pathlib.",
    "omegaconf.",
    "argparse.",
    "typing.",
    "collections.",
    "datetime.",
    "enum.",
    "lightning.",
    "pytorch_lightning.",
    "lightning_fabric.",
)


class _Inert:
    """Placeholder for a metadata global: accepts any constructor arguments and state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _unsafe_globals(path: str, message: str) -> list[str]:
    """Globals a checkpoint names that torch's weights-only allowlist lacks, found without unpickling anything."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:
            pass
    return re.findall(r"GLOBAL ([\w.]+)", message) or _scan_plain_pickle(path)


def _scan_plain_pickle(path: str, limit: int = 1 << 26) -> list[str]:
    """Statically list the globals of a plain pickle (pickletools reads opcodes; nothing is built or called)."""
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, pos in pickletools.genops(f):
                if pos > limit:
                    break
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle (or a damaged one): report what was read before the bad opcode
        pass
    return [n for n in names if n not in ("torch._utils._rebuild_tensor_v2", "collections.OrderedDict")]


def safe_torch_load(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True) with clear errors; metadata globals become inert placeholders."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # a plain pickle draws a protocol warning; the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, str(e))
        if not names:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(e)}") from None
        refused = [n for n in names if not n.startswith(METADATA_MODULES)]
        if refused:
            raise CheckpointError(
                f"refusing to load {path}: its pickle calls or builds {listing(refused)}, which torch's weights-only "
                "loader does not allow (loading it would run code from the file). magvit2 never unpickles code; "
                "if you trust the file, re-save its state_dict with plain tensors"
            ) from None
        try:
            with torch.serialization.safe_globals([(_Inert, n) for n in names]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e2:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(e2)}") from None
    except Exception as e:  # garbage makes torch's reader fail in many ways (zip, pickle, index errors)
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated download or another file type?): {_first_line(e)}"
        ) from None
