"""Official Open-MAGVIT2 tokenizer checkpoints (and our training checkpoints, which share their layout) -> `Tokenizer`,
or `VideoTokenizer` for the video model's (its convolutions are 5-D, under `.conv_1` names: `encoder.conv_in.conv_1.*`).

Official Lightning `.ckpt` (reference/open-magvit2.md §2.5): `ckpt["state_dict"]` holds the raw `encoder.*` /
`decoder.*` weights, the EMA copies as `model_ema.<name without dots>` (e.g. `model_ema.encoderconv_inweight`), and
training-only keys (`loss.*`, `model_ema.decay`, ...). AR checkpoints carry the tokenizer under
`first_stage_model.` next to `transformer.*`. The reported numbers use the EMA weights, so they are preferred.
Files are read with the weights-only loader of magvit2/nn/weights.py (pickled code is never executed). Our format
(a `save_pretrained` folder) is read by `Tokenizer.from_pretrained`; `load_checkpoint` takes either.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, NamedTuple

import torch

from magvit2.nn.image.tokenizer import CONFIG_NAME, PRESETS, Tokenizer, TokenizerConfig
from magvit2.nn.video.tokenizer import VIDEO_FORMAT_NAME, VIDEO_PRESETS, VideoTokenizer, VideoTokenizerConfig
from magvit2.nn.weights import CheckpointError, build_module, listing, load_safetensors, safe_torch_load

AR_PREFIX = "first_stage_model."
EMA_PREFIX = "model_ema."
EMA_META = {"model_ema.decay", "model_ema.num_updates"}
AR_FACTORIZED_BITS = (6, 12)  # the AR configs' token_factorization split
VIDEO_KEY = "encoder.conv_in.conv_1.weight"  # only the video model's convolutions sit under `.conv_1`


def tokenizer_class(config: TokenizerConfig) -> type[Tokenizer]:
    """The module a config builds: VideoTokenizer for a VideoTokenizerConfig, else the image Tokenizer."""
    return VideoTokenizer if isinstance(config, VideoTokenizerConfig) else Tokenizer


class LoadedState(NamedTuple):
    state_dict: dict[str, torch.Tensor]  # tokenizer keys (encoder.* / decoder.*)
    source: str  # "ema", "raw" or "magvit2"
    is_ar: bool  # came from an AR checkpoint's first_stage_model
    ignored: list[str]  # keys of the file that were not used


def extract_state_dict(obj: Any, path: str) -> dict[str, Any]:
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
                    f"{listing([EMA_PREFIX + n.replace('.', '') for n in missing])} "
                    "(pass use_ema=False for the raw weights)"
                )
            picked, source = found, "ema"
    used = {EMA_PREFIX + n.replace(".", "") for n in picked} if source == "ema" else set(picked)
    ignored = outer_ignored + [(AR_PREFIX if is_ar else "") + k for k in inner if k not in used]
    return LoadedState(picked, source, is_ar, ignored)


def _names_from_presets(ema: dict[str, Any]) -> list[str]:
    """Tokenizer key names for an EMA-only file: the preset whose flattened names are all present."""
    for config in [*PRESETS.values(), *VIDEO_PRESETS.values()]:
        with torch.device("meta"):
            names = list(tokenizer_class(config)(config).state_dict())
        if all(n.replace(".", "") in ema for n in names):
            return names
    return []


def check_tensors(sd: dict[str, Any], keys: list[str], what: str) -> None:
    """CheckpointError listing the `keys` that `sd` lacks or holds as something other than a tensor."""
    missing = [k for k in keys if k not in sd]
    if missing:
        raise CheckpointError(f"cannot infer {what}: missing {listing(missing)}")
    not_tensor = [f"{k} ({type(sd[k]).__name__})" for k in keys if not isinstance(sd[k], torch.Tensor)]
    if not_tensor:
        raise CheckpointError(f"cannot infer {what}: not tensors: {listing(not_tensor)}")


def infer_config(sd: dict[str, torch.Tensor], **overrides: Any) -> TokenizerConfig:
    """Architecture from the weight shapes (conv_in, level/block counts, conv_out); keyword overrides win. Video
    weights (5-D convolutions under `.conv_1` names) give a VideoTokenizerConfig."""
    video = VIDEO_KEY in sd
    if video:  # the same shape rules over the names without the `.conv_1` level
        sd = {k.replace(".conv_1.", "."): v for k, v in sd.items()}
    need = ["encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_out.weight"]
    check_tensors(sd, need, "the architecture")
    ch, in_channels = sd["encoder.conv_in.weight"].shape[:2]
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    widths = [f"encoder.down.{i}.block.0.conv1.weight" for i in levels]
    missing = [k for k in widths if not isinstance(sd.get(k), torch.Tensor)]
    if not levels or not blocks or missing:
        raise CheckpointError(f"cannot infer the architecture: missing encoder levels/blocks {listing(missing)}")
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
        return (VideoTokenizerConfig if video else TokenizerConfig)(**config)
    except ValueError as e:
        raise CheckpointError(f"inferred an invalid architecture {config}: {e}") from None


class OfficialFile(NamedTuple):
    raw: Any  # the object in the file (a Lightning checkpoint dict, or a plain state dict)
    state_dict: dict[str, Any]  # all of its weights
    tokenizer: LoadedState  # the tokenizer's weights, mapped to our keys


def read_official(path: str | os.PathLike, *, use_ema: bool = True) -> OfficialFile:
    """A Lightning checkpoint or state-dict file read once, weights-only: the object, its weights, the tokenizer's."""
    path = os.fspath(path)
    raw = safe_torch_load(path)
    sd = extract_state_dict(raw, path)
    return OfficialFile(raw, sd, map_official_state_dict(sd, use_ema=use_ema))


def load_official(path: str | os.PathLike, *, use_ema: bool = True) -> LoadedState:
    """The tokenizer weights of an official (or our training) checkpoint, mapped to our keys."""
    return read_official(path, use_ema=use_ema).tokenizer


def stored_model_config(raw: object, kind: str, config_cls: type) -> Any:
    """The model config that `magvit2 train <kind>` stores in its checkpoints under "magvit2" (the run config's
    `model` section, built with `config_cls.from_section`), or None for other files."""
    meta = raw.get("magvit2") if isinstance(raw, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != kind or not isinstance(meta.get("config"), dict):
        return None
    try:
        return config_cls.from_section(dict(meta["config"].get("model") or {}))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the stored training config has an invalid model section: {e}") from None


def stored_tokenizer_config(raw: object) -> TokenizerConfig | None:
    """The tokenizer config (architecture and LFQ settings) of a `magvit2 train tokenizer` or `magvit2 train
    video-tokenizer` checkpoint, else None."""
    stored = stored_model_config(raw, "tokenizer", TokenizerConfig)
    return stored if stored is not None else stored_model_config(raw, "video-tokenizer", VideoTokenizerConfig)


def load_checkpoint(
    path: str | os.PathLike,
    use_ema: bool = True,
    *,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
    **config_overrides: Any,
) -> Tokenizer:
    """Load a tokenizer, in eval mode, from an official Lightning `.ckpt` (tokenizer or AR), a plain state-dict
    file, or our format (a `save_pretrained` directory or its `model.safetensors`).

    `use_ema`: take the `model_ema.*` weights when the file has them (the official evaluation does). The architecture
    is read from the weight shapes; an AR checkpoint gets `factorized_bits=(6, 12)`. `config_overrides` replace
    TokenizerConfig fields (e.g. `factorized_bits=None`, `entropy_weight=0.0`). Zip checkpoints are checked against
    their CRC32 records, and weights holding NaN/inf are refused unless `allow_nonfinite`.

    Example:
        >>> model = load_checkpoint("imagenet_256_L.ckpt")  # doctest: +SKIP
        >>> model.save_pretrained("open-magvit2-256-L")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if os.path.isdir(path) or (path.endswith(".safetensors") and os.path.isfile(_sibling_config(path))):
        directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
        return load_pretrained_dir(directory, device=device, allow_nonfinite=allow_nonfinite)
    if path.endswith(".safetensors"):
        loaded = map_official_state_dict(load_safetensors(path), use_ema=use_ema)
    else:
        loaded = load_official(path, use_ema=use_ema)
    return tokenizer_from_state(loaded, path, device=device, allow_nonfinite=allow_nonfinite, **config_overrides)


def tokenizer_from_state(
    loaded: LoadedState,
    origin: str,
    *,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
    **config_overrides: Any,
) -> Tokenizer:
    """A Tokenizer from mapped official weights: architecture from shapes, (6, 12) token split for AR files."""
    if loaded.is_ar:
        config_overrides.setdefault("factorized_bits", AR_FACTORIZED_BITS)
    config = infer_config(loaded.state_dict, **config_overrides)
    return build_from_state(config, loaded.state_dict, origin, device, allow_nonfinite=allow_nonfinite)


def _sibling_config(path: str) -> str:
    return os.path.join(os.path.dirname(path) or ".", CONFIG_NAME)


def load_pretrained_dir(
    directory: str | os.PathLike, *, device: str | torch.device = "cpu", allow_nonfinite: bool = False
) -> Tokenizer:
    """A `save_pretrained` directory: a VideoTokenizer when its config.json says so, else an image Tokenizer."""
    try:
        with open(os.path.join(directory, CONFIG_NAME), encoding="utf-8") as f:
            video = json.load(f).get("format") == VIDEO_FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        video = False  # from_pretrained names the problem
    cls = VideoTokenizer if video else Tokenizer
    return cls.from_pretrained(directory, device=device, allow_nonfinite=allow_nonfinite)


def build_from_state(
    config: TokenizerConfig,
    sd: dict[str, Any],
    origin: str,
    device: str | torch.device = "cpu",
    *,
    allow_nonfinite: bool = False,
) -> Tokenizer:
    """A Tokenizer (VideoTokenizer for a video config) holding `sd` (as float32 copies on `device`); built on the meta
    device, so no random init."""
    cls = tokenizer_class(config)
    return build_module(lambda: cls(config), sd, origin, device, what="the tokenizer", allow_nonfinite=allow_nonfinite)
