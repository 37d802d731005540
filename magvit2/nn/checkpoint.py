"""Loading official Open-MAGVIT2 checkpoints and our own format, safely.

Official Lightning `.ckpt` (reference/open-magvit2.md §2.5): `ckpt["state_dict"]` holds the raw `encoder.*` /
`decoder.*` weights, the EMA copies as `model_ema.<name without dots>` (e.g. `model_ema.encoderconv_inweight`), and
training-only keys (`loss.*`, `model_ema.decay`, ...). AR checkpoints carry the tokenizer under
`first_stage_model.` next to `transformer.*`. The reported numbers use the EMA weights, so they are preferred.

Safety: files are read with `torch.load(weights_only=True)`; pickled code is never executed. A file whose pickle
names globals outside torch's allowlist is refused with their names, except for known training metadata (numpy
scalars, pathlib paths, omegaconf/Lightning objects in `hyper_parameters` or `callbacks`): those are rebuilt as inert
placeholders that run no code, and nothing from them is used.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
import zipfile
from typing import Any, NamedTuple

import torch

from magvit2.nn.tokenizer import (
    CONFIG_NAME,
    PRESETS,
    Tokenizer,
    TokenizerConfig,
)
from magvit2.nn.weights_io import (
    CheckpointError,
    _first_line,
    _listing,
    build_module,
    load_safetensors,
)

AR_PREFIX = "first_stage_model."
EMA_PREFIX = "model_ema."
EMA_META = {"model_ema.decay", "model_ema.num_updates"}
AR_FACTORIZED_BITS = (6, 12)  # the AR configs' token_factorization split
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


class LoadedState(NamedTuple):
    state_dict: dict[str, torch.Tensor]  # tokenizer keys (encoder.* / decoder.*)
    source: str  # "ema", "raw" or "magvit2"
    is_ar: bool  # came from an AR checkpoint's first_stage_model
    ignored: list[str]  # keys of the file that were not used


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
                f"refusing to load {path}: its pickle calls or builds {_listing(refused)}, which torch's weights-only "
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


def _extract_state_dict(obj: Any, path: str) -> dict[str, Any]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(f"{path} holds no state_dict (expected a Lightning checkpoint or a dict of tensors)")


def map_official_state_dict(sd: dict[str, Any], *, use_ema: bool = True) -> LoadedState:
    """Official Lightning keys -> tokenizer keys: EMA weights when present and `use_ema`, else the raw ones."""
    is_ar = any(k.startswith(AR_PREFIX) for k in sd)
    if is_ar:
        inner = {k[len(AR_PREFIX) :]: v for k, v in sd.items() if k.startswith(AR_PREFIX)}
        outer_ignored = [k for k in sd if not k.startswith(AR_PREFIX)]
    else:
        inner, outer_ignored = sd, []
    raw = {k: v for k, v in inner.items() if k.startswith(("encoder.", "decoder."))}
    ema = {k[len(EMA_PREFIX) :]: v for k, v in inner.items() if k.startswith(EMA_PREFIX) and k not in EMA_META}
    names = list(raw) or _names_from_presets(ema)
    picked, source = raw, "raw"
    if use_ema and ema and names:
        flat_to_name: dict[str, str] = {}
        for name in names:
            flat = name.replace(".", "")
            if flat in flat_to_name:
                raise CheckpointError(
                    f"EMA names are ambiguous: {name} and {flat_to_name[flat]} both flatten to {flat}"
                )
            flat_to_name[flat] = name
        found = {flat_to_name[f]: v for f, v in ema.items() if f in flat_to_name}
        if found:
            missing = [n for n in names if n not in found]
            if missing:
                raise CheckpointError(
                    "the checkpoint has EMA weights for only part of the tokenizer; missing "
                    f"{_listing([EMA_PREFIX + n.replace('.', '') for n in missing])} "
                    "(pass use_ema=False for the raw weights)"
                )
            picked, source = found, "ema"
    used = {EMA_PREFIX + n.replace(".", "") for n in picked} if source == "ema" else set(picked)
    ignored = outer_ignored + [(AR_PREFIX if is_ar else "") + k for k in inner if k not in used]
    return LoadedState(picked, source, is_ar, ignored)


def _names_from_presets(ema: dict[str, Any]) -> list[str]:
    """Tokenizer key names for an EMA-only file: the preset whose flattened names are all present."""
    for config in PRESETS.values():
        with torch.device("meta"):
            names = list(Tokenizer(config).state_dict())
        if all(n.replace(".", "") in ema for n in names):
            return names
    return []


def infer_config(sd: dict[str, torch.Tensor], **overrides: Any) -> TokenizerConfig:
    """Architecture from the weight shapes (conv_in, level/block counts, conv_out); keyword overrides win."""
    need = ["encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_out.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointError(f"cannot infer the architecture: missing {_listing(missing)}")
    ch, in_channels = sd["encoder.conv_in.weight"].shape[:2]
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    widths = [f"encoder.down.{i}.block.0.conv1.weight" for i in levels]
    missing = [k for k in widths if k not in sd]
    if not levels or not blocks or missing:
        raise CheckpointError(f"cannot infer the architecture: missing encoder levels/blocks {_listing(missing)}")
    config = dict(
        ch=int(ch),
        ch_mult=tuple(int(sd[k].shape[0]) // int(ch) for k in widths),
        num_res_blocks=max(blocks) + 1,
        z_channels=int(sd["encoder.conv_out.weight"].shape[0]),
        in_channels=int(in_channels),
        out_ch=int(sd["decoder.conv_out.weight"].shape[0]),
    )
    config["codebook_size"] = 2 ** config["z_channels"]
    config.update(overrides)
    try:
        return TokenizerConfig(**config)
    except ValueError as e:
        raise CheckpointError(f"inferred an invalid architecture {config}: {e}") from None


def load_official(path: str | os.PathLike, *, use_ema: bool = True) -> LoadedState:
    path = os.fspath(path)
    return map_official_state_dict(_extract_state_dict(safe_torch_load(path), path), use_ema=use_ema)


def load_checkpoint(
    path: str | os.PathLike,
    use_ema: bool = True,
    *,
    device: str | torch.device = "cpu",
    **config_overrides: Any,
) -> Tokenizer:
    """Load a tokenizer, in eval mode, from an official Lightning `.ckpt` (tokenizer or AR), a plain state-dict
    file, or our format (a `save_pretrained` directory or its `model.safetensors`).

    `use_ema`: take the `model_ema.*` weights when the file has them (the official evaluation does). The architecture
    is read from the weight shapes; an AR checkpoint gets `factorized_bits=(6, 12)`. `config_overrides` replace
    TokenizerConfig fields (e.g. `factorized_bits=None`, `entropy_weight=0.0`).

    Example:
        >>> model = load_checkpoint("imagenet_256_L.ckpt")  # doctest: +SKIP
        >>> model.save_pretrained("open-magvit2-256-L")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if os.path.isdir(path) or (path.endswith(".safetensors") and os.path.isfile(_sibling_config(path))):
        return load_pretrained_dir(path if os.path.isdir(path) else os.path.dirname(path) or ".", device=device)
    if path.endswith(".safetensors"):
        loaded = map_official_state_dict(load_safetensors(path), use_ema=use_ema)
    else:
        loaded = load_official(path, use_ema=use_ema)
    return tokenizer_from_state(loaded, path, device=device, **config_overrides)


def tokenizer_from_state(
    loaded: LoadedState, origin: str, *, device: str | torch.device = "cpu", **config_overrides: Any
) -> Tokenizer:
    """A Tokenizer from mapped official weights: architecture from shapes, (6, 12) token split for AR files."""
    if loaded.is_ar:
        config_overrides.setdefault("factorized_bits", AR_FACTORIZED_BITS)
    config = infer_config(loaded.state_dict, **config_overrides)
    return build_from_state(config, loaded.state_dict, origin, device)


def _sibling_config(path: str) -> str:
    return os.path.join(os.path.dirname(path) or ".", CONFIG_NAME)


def load_pretrained_dir(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> Tokenizer:
    return Tokenizer.from_pretrained(directory, device=device)


def build_from_state(
    config: TokenizerConfig, sd: dict[str, Any], origin: str, device: str | torch.device = "cpu"
) -> Tokenizer:
    """A Tokenizer holding `sd` (as float32 copies on `device`); built on the meta device, so no random init."""
    return build_module(lambda: Tokenizer(config), sd, origin, device, what="the tokenizer")
