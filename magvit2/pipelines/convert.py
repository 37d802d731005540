"""Checkpoint -> our format folder, behind `magvit2 export` (alias `magvit2 convert`): a tokenizer (`config.json` +
`model.safetensors`) and, for AR checkpoints, the transformer beside it (`transformer.json` + `.safetensors`).

The file is read once (AR checkpoints are GBs) and gives both models. The tokenizer takes the EMA weights unless
told otherwise; its config comes from the one our tokenizer trainer stores in its checkpoints, else from the weight
shapes; an AR checkpoint's tokenizer takes the transformer's sub-token split. The class names a training
checkpoint stores go into `transformer.json`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, NamedTuple

from magvit2.checkpoints.ar import ar_transformer, save_ar_pretrained, stored_class_names
from magvit2.checkpoints.image import read_official, stored_tokenizer_config, tokenizer_from_state
from magvit2.nn.ar.transformer import ARTransformer
from magvit2.nn.image.tokenizer import Tokenizer

AUTO = "auto"


class Converted(NamedTuple):
    tokenizer: Tokenizer
    transformer: ARTransformer | None
    source: str  # "ema" or "raw": which tokenizer weights were taken
    is_ar: bool
    num_tensors: int  # tokenizer tensors taken from the file
    ignored: int  # other keys of the file (raw copies, loss.*, optimizer-free metadata)
    class_names: list[str] | None  # of an AR model trained by `magvit2 train ar`; None otherwise


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    use_ema: bool = True,
    factorized_bits: tuple[int, ...] | None | str = AUTO,
    **ar_overrides: Any,
) -> Converted:
    """Write `outdir` for `load_checkpoint` / `load_ar_checkpoint`. `factorized_bits`: the tokenizer's index groups
    ("auto": the stored config's, or the transformer's split for AR files); `ar_overrides`: ARConfig fields that the
    weight shapes do not fix (`n_head`, `block_size`). A write that fails (disk full) leaves no `outdir` when it
    did not exist before, and raises OSError naming the file."""
    path = os.fspath(checkpoint)
    file = read_official(path, use_ema=use_ema)
    stored = stored_tokenizer_config(file.raw)
    overrides = dataclasses.asdict(stored) if stored is not None else {}  # tuples stay tuples
    if factorized_bits != AUTO:
        overrides["factorized_bits"] = factorized_bits
    transformer, names = None, None
    if file.tokenizer.is_ar:
        transformer = ar_transformer(file, path, **{k: v for k, v in ar_overrides.items() if v})
        overrides.setdefault("factorized_bits", transformer.config.factorized_bits)
    tokenizer = tokenizer_from_state(file.tokenizer, path, **overrides)
    if transformer is not None:
        names = stored_class_names(file.raw)
    created = not os.path.exists(outdir)
    try:
        tokenizer.save_pretrained(outdir)
        if transformer is not None:
            save_ar_pretrained(transformer, outdir, class_names=names)
    except OSError:
        if created:  # the tokenizer's files without the transformer's would load as a half model
            shutil.rmtree(outdir, ignore_errors=True)
        raise
    loaded = file.tokenizer
    return Converted(
        tokenizer, transformer, loaded.source, loaded.is_ar, len(loaded.state_dict), len(loaded.ignored), names
    )
