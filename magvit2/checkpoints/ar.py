"""Official AR checkpoints (`AR_256_{B,L,XL}.ckpt`, and those of `magvit2 train ar`) -> `ARTransformer` + `Tokenizer`.

The file holds `transformer.*` and the tokenizer under `first_stage_model.*` (reference §4.5); both are read from one
weights-only load: the tokenizer with its raw weights and the transformer's token split ((6, 12)), as the official
sampler uses them. Our AR format is a folder: `transformer.json` + `transformer.safetensors` beside a tokenizer's
`config.json` + `model.safetensors`.

Class names: a model of `magvit2 train ar` knows the names of the classes it was trained on (its data's folder
names, id order), under "magvit2" -> "class_names" in its checkpoints and as "class_names" in `transformer.json`;
only ids 0 .. len(class_names) - 1 were trained. Official checkpoints (and older files) have none: None, every id
below class_num is valid.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, NamedTuple

import torch

from magvit2.checkpoints.image import (
    OfficialFile,
    check_tensors,
    read_official,
    stored_model_config,
    tokenizer_from_state,
)
from magvit2.nn.ar.transformer import AR_PRESETS, ARConfig, ARTransformer
from magvit2.nn.image.tokenizer import Tokenizer
from magvit2.nn.weights import (
    CheckpointError,
    build_module,
    load_safetensors,
    read_format_json,
    write_format_dir,
)

TRANSFORMER_PREFIX = "transformer."
AR_CONFIG_NAME, AR_WEIGHTS_NAME = "transformer.json", "transformer.safetensors"
AR_FORMAT_NAME, AR_FORMAT_VERSION = "magvit2-ar", 1
RELEASED = {name: c for name, c in AR_PRESETS.items() if name.startswith("open-magvit2-ar-")}
SHAPE_FIELDS = ("dim", "spatial_n_layer", "factorized_n_layer", "class_num", "factorized_bits")
CLASS_NAMES_KEY = "class_names"


class ARModel(NamedTuple):
    transformer: ARTransformer
    tokenizer: Tokenizer
    class_names: list[str] | None  # the trained classes' names in id order; None: not known (all ids valid)


def infer_ar_config(sd: dict[str, Any], origin: str = "the checkpoint", **overrides: Any) -> ARConfig:
    """ARConfig from the weight shapes: width, sub-token bits, classes, layer counts. The head count is not in the
    shapes and is never guessed: a model whose shapes are exactly those of a released one (AR-B/L/XL) takes its
    preset's (16, 20, 24); any other needs `n_head=` (a head count that differs from training attends wrongly
    without an error: a dim-256, 8-head model read with the old guess of dim // 64 = 4 heads matched 37% of its
    greedy pre tokens and 22% of its post tokens, random weights, 8 classes)."""
    need = [
        "pre_emb.weight",
        "post_emb.weight",
        "class_emb.embedding_table.weight",
        "spatial_blocks.0.feed_forward.w1.weight",
    ]
    check_tensors(sd, need, "the AR architecture")
    n_pre, dim = sd["pre_emb.weight"].shape
    n_post = sd["post_emb.weight"].shape[0]
    bits = (int(math.log2(n_pre)), int(math.log2(n_post)))
    if 2 ** bits[0] != n_pre or 2 ** bits[1] != n_post:
        raise CheckpointError(f"sub-token tables {n_pre} x {n_post} are not powers of 2")

    def layers(stack: str) -> int:
        return len({int(m.group(1)) for k in sd if (m := re.match(rf"{stack}\.(\d+)\.", k))})

    dim = int(dim)
    fields: dict[str, Any] = dict(
        dim=dim,
        spatial_n_layer=layers("spatial_blocks"),
        factorized_n_layer=layers("factorized_blocks"),
        class_num=int(sd["class_emb.embedding_table.weight"].shape[0]) - 1,
        factorized_bits=bits,
    )
    if overrides.get("n_head") is None:
        released = [c for c in RELEASED.values() if all(getattr(c, f) == fields[f] for f in SHAPE_FIELDS)]
        if not released:
            raise CheckpointError(
                f"{origin}: the AR transformer's width (dim={dim}, {fields['spatial_n_layer']}+"
                f"{fields['factorized_n_layer']} layers) is not a released one (AR-B/L/XL) and its head count is not "
                "in the weights: pass --n-head (n_head=) with the head count it was trained with"
            )
        fields["n_head"] = released[0].n_head
    fields.update({k: v for k, v in overrides.items() if not (k == "n_head" and v is None)})
    try:
        config = ARConfig(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"inferred an invalid AR architecture {fields}: {e}") from None
    hidden = int(sd["spatial_blocks.0.feed_forward.w1.weight"].shape[0])
    if hidden != config.ffn_hidden:
        config = dataclasses.replace(config, ffn_dim_multiplier=hidden / int(2 * 4 * dim / 3))
    return config


def stored_ar_fields(raw: object) -> dict[str, Any]:
    """n_head and block_size from the run config `magvit2 train ar` stores in its checkpoints under "magvit2"
    (these are not in the weight shapes); {} for other files."""
    config = stored_model_config(raw, "ar", ARConfig)
    return {} if config is None else {"n_head": config.n_head, "block_size": config.block_size}


def stored_class_names(raw: object) -> list[str] | None:
    """The class names `magvit2 train ar` stores in its checkpoints under "magvit2"; None for other files."""
    meta = raw.get("magvit2") if isinstance(raw, dict) else None
    names = meta.get(CLASS_NAMES_KEY) if isinstance(meta, dict) and meta.get("kind") == "ar" else None
    return None if names is None else checked_class_names(names, "the checkpoint's stored class names")


def checked_class_names(names: object, origin: str, class_num: int | None = None) -> list[str]:
    """`names` as a list of strings, at most `class_num` of them, or CheckpointError naming `origin`."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{origin}: class_names must be a list of strings, got {names!r:.80}")
    if class_num is not None and len(names) > class_num:
        raise CheckpointError(f"{origin}: {len(names)} class names for a model of {class_num} classes")
    return names


def transformer_from_state(
    sd: dict[str, Any],
    origin: str,
    *,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
    **config_overrides: Any,
) -> ARTransformer:
    """The ARTransformer of an official AR state dict (its `transformer.*` keys), architecture from the shapes."""
    inner = {k[len(TRANSFORMER_PREFIX) :]: v for k, v in sd.items() if k.startswith(TRANSFORMER_PREFIX)}
    if not inner:
        raise CheckpointError(f"{origin} has no transformer.* keys: not an AR checkpoint (tokenizers: load_checkpoint)")
    config = infer_ar_config(inner, origin, **config_overrides)
    return build_module(
        lambda: ARTransformer(config), inner, origin, device, what="the AR transformer", allow_nonfinite=allow_nonfinite
    )


def load_ar_checkpoint(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
    **config_overrides: Any,
) -> tuple[ARTransformer, Tokenizer]:
    """(transformer, tokenizer) in eval mode from an official AR Lightning checkpoint (or one of `magvit2 train ar`,
    whose stored run config gives the head count and grid), or an AR model directory. `config_overrides` replace
    inferred ARConfig fields (`n_head=` is required for a width that is not a released one, `block_size=` for
    another grid). NaN/inf weights are refused unless `allow_nonfinite`.

    Example:
        >>> transformer, tokenizer = load_ar_checkpoint("AR_256_B.ckpt")  # doctest: +SKIP
    """
    model = load_ar_model(path, device=device, allow_nonfinite=allow_nonfinite, **config_overrides)
    return model.transformer, model.tokenizer


def load_ar_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
    **config_overrides: Any,
) -> ARModel:
    """`load_ar_checkpoint` plus the class names stored with the model (None for official checkpoints).

    Example:
        >>> transformer, tokenizer, class_names = load_ar_model("ar-mine")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return read_ar_pretrained(path, device=device, allow_nonfinite=allow_nonfinite)
    file = read_official(path, use_ema=False)  # the AR configs build the tokenizer with use_ema: False
    transformer, tokenizer = ar_models(file, path, device=device, allow_nonfinite=allow_nonfinite, **config_overrides)
    names = stored_class_names(file.raw)
    if names is not None:
        names = checked_class_names(names, path, transformer.config.class_num)
    return ARModel(transformer, tokenizer, names)


def ar_transformer(
    file: OfficialFile,
    origin: str,
    *,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
    **config_overrides: Any,
) -> ARTransformer:
    """The transformer of an AR checkpoint read by `read_official`: heads and grid from the run config our trainer
    stored (else inferred from the shapes), then `config_overrides`."""
    stored = stored_ar_fields(file.raw)
    fields = {**stored, **{k: v for k, v in config_overrides.items() if v is not None or k not in stored}}
    return transformer_from_state(file.state_dict, origin, device=device, allow_nonfinite=allow_nonfinite, **fields)


def ar_models(
    file: OfficialFile,
    origin: str,
    *,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
    **config_overrides: Any,
) -> tuple[ARTransformer, Tokenizer]:
    """(transformer, tokenizer) of an AR checkpoint read by `read_official`; the tokenizer with the transformer's
    sub-token split."""
    transformer = ar_transformer(file, origin, device=device, allow_nonfinite=allow_nonfinite, **config_overrides)
    if not file.tokenizer.is_ar:
        raise CheckpointError(f"{origin} has no first_stage_model.* tokenizer next to its transformer")
    bits = transformer.config.factorized_bits  # the tokenizer's split is the transformer's sub-token split
    tokenizer = tokenizer_from_state(
        file.tokenizer, origin, device=device, allow_nonfinite=allow_nonfinite, factorized_bits=bits
    )
    return transformer, tokenizer


def save_ar_pretrained(
    transformer: ARTransformer, directory: str | os.PathLike, *, class_names: list[str] | None = None
) -> None:
    """Write `transformer.json` (the config, and `class_names` when known) + `transformer.safetensors` (beside a
    tokenizer's config.json + model.safetensors)."""
    meta = {"format": AR_FORMAT_NAME, "format_version": AR_FORMAT_VERSION, **transformer.config.to_dict()}
    if class_names is not None:
        meta[CLASS_NAMES_KEY] = checked_class_names(list(class_names), "class_names", transformer.config.class_num)
    write_format_dir(directory, AR_CONFIG_NAME, AR_WEIGHTS_NAME, meta, transformer)


def load_ar_pretrained(
    directory: str | os.PathLike, *, device: str | torch.device = "cpu", allow_nonfinite: bool = False
) -> tuple[ARTransformer, Tokenizer]:
    """(transformer, tokenizer) from a directory written by `magvit2 export AR.ckpt DIR` or `save_ar_pretrained`;
    NaN/inf weights are refused unless `allow_nonfinite`."""
    model = read_ar_pretrained(directory, device=device, allow_nonfinite=allow_nonfinite)
    return model.transformer, model.tokenizer


def read_ar_pretrained(
    directory: str | os.PathLike, *, device: str | torch.device = "cpu", allow_nonfinite: bool = False
) -> ARModel:
    """`load_ar_pretrained` plus the class names of `transformer.json` (None in directories without them)."""
    directory = os.fspath(directory)
    path = os.path.join(directory, AR_CONFIG_NAME)
    hint = f"an AR model directory holds {AR_CONFIG_NAME} and {AR_WEIGHTS_NAME} (magvit2 convert of an AR checkpoint)"
    meta = read_format_json(path, AR_FORMAT_NAME, AR_FORMAT_VERSION, hint)
    names = meta.pop(CLASS_NAMES_KEY, None)
    try:
        config = ARConfig.from_dict(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if names is not None:
        names = checked_class_names(names, path, config.class_num)
    weights = os.path.join(directory, AR_WEIGHTS_NAME)
    sd = load_safetensors(weights)
    transformer = build_module(
        lambda: ARTransformer(config), sd, weights, device, what="the AR transformer", allow_nonfinite=allow_nonfinite
    )
    tokenizer = Tokenizer.from_pretrained(directory, device=device, allow_nonfinite=allow_nonfinite)
    return ARModel(transformer, tokenizer, names)
