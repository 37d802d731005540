"""Training checkpoint -> our format (config.json + model.safetensors), EMA weights by default."""

from __future__ import annotations

import dataclasses
import os

from magvit2.nn.checkpoint import _extract_state_dict, map_official_state_dict, safe_torch_load, tokenizer_from_state
from magvit2.nn.tokenizer import Tokenizer, TokenizerConfig


def export_checkpoint(
    checkpoint: str | os.PathLike, outdir: str | os.PathLike, *, use_ema: bool = True
) -> tuple[Tokenizer, str]:
    """Write `outdir` for `from_pretrained`/`load_checkpoint`; the architecture and LFQ settings come from the config
    stored in our checkpoints (official checkpoints: inferred from the weight shapes). Returns (model, source)."""
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = safe_torch_load(path)
    loaded = map_official_state_dict(_extract_state_dict(obj, path), use_ema=use_ema)
    overrides = {}
    meta = obj.get("magvit2") if isinstance(obj, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
        from magvit2.train.config import config_from_dict

        config: TokenizerConfig = config_from_dict(meta["config"]).tokenizer_config()
        overrides = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    model = tokenizer_from_state(loaded, path, **overrides)
    model.save_pretrained(outdir)
    return model, loaded.source
