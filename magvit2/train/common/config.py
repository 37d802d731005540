"""What every trainer's config shares: the `trainer` section (length, precision, devices, checkpoints) and the
reading of a run config: a YAML file or a preset of `magvit2/train/configs/<kind>/`, `section.key=value` overrides,
sections checked against their dataclasses (unknown keys are rejected with the list of valid ones).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from magvit2.ops.threads import parse_threads

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
KINDS = ("tokenizer", "ar")


@dataclasses.dataclass
class TrainerConfig:
    max_epochs: int = -1
    max_steps: int = -1  # training steps (one G and one D update each); -1: no limit
    precision: str = "32-true"  # "bf16-mixed", "16-mixed": the LFQ stays in fp32 regardless
    accelerator: str = "auto"  # "cpu", "gpu", "npu" (torch_npu), "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    seed: int = 0
    log_every_n_steps: int = 50
    image_every_n_steps: int = 1000  # reconstruction grid PNG of validation images (EMA weights)
    checkpoint_every_n_steps: int = 5000
    val_every_n_epochs: int = 1
    val_every_n_steps: int | None = None  # validate every N training steps instead of at epoch ends
    grid_images: int = 8
    max_nonfinite_skips: int = 10  # consecutive NaN/inf losses skipped (no update) before the run stops
    threads: int | str = "auto"  # CPU threads per process; auto: by model size (magvit2/ops/threads.py)

    def __post_init__(self) -> None:
        if self.val_every_n_steps is not None and (
            not isinstance(self.val_every_n_steps, int) or self.val_every_n_steps < 1
        ):
            raise ValueError(
                f"trainer.val_every_n_steps must be a positive int or null, got {self.val_every_n_steps!r}"
            )
        if not isinstance(self.max_nonfinite_skips, int) or self.max_nonfinite_skips < 0:
            raise ValueError(f"trainer.max_nonfinite_skips must be an int >= 0, got {self.max_nonfinite_skips!r}")
        try:
            parse_threads(self.threads)
        except ValueError as e:
            raise ValueError(f"trainer.{e}") from None
        if self.max_epochs == -1 and self.max_steps == -1:
            raise ValueError("trainer: set max_epochs or max_steps (both are -1)")
        if self.precision not in ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"):
            raise ValueError(f"trainer.precision must be 32-true, bf16-mixed or 16-mixed, got {self.precision!r}")


def plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def check_model_section(model: Any, fields_of: type, presets: dict[str, Any]) -> dict[str, Any]:
    """The `model` section: a preset name from `presets` plus overrides of `fields_of`'s fields; YAML lists of the
    tuple fields become tuples."""
    if not isinstance(model, dict):
        raise ValueError(f"model: expected a mapping, got {type(model).__name__}")
    names = ["preset"] + [f.name for f in dataclasses.fields(fields_of)]
    unknown = sorted(set(model) - set(names))
    if unknown:
        raise ValueError(f"model: unknown key(s) {unknown}; valid keys: {names}")
    if model.get("preset") is not None and model["preset"] not in presets:
        raise ValueError(f"model.preset: unknown preset {model['preset']!r}; choose from {sorted(presets)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}


def check_sections(values: Any, sections: list[str]) -> None:
    if not isinstance(values, dict):
        raise ValueError(f"config: expected a mapping at the top level, got {type(values).__name__}")
    valid = ["name", "model", *sections]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"config: unknown section(s) {unknown}; valid sections: {valid}")


def sections_from_dict(
    values: Any, *, model_fields: type, presets: dict[str, Any], sections: dict[str, type], name: str
) -> dict[str, Any]:
    """A run config's parts, checked: `model` (a preset of `presets` plus `model_fields` overrides), each of
    `sections` built as its dataclass (absent sections take their defaults), and `name`; as keyword arguments for the
    trainer's config dataclass."""
    check_sections(values, list(sections))
    model = check_model_section(values.get("model") or {}, model_fields, presets)
    built = {k: build_section(cls, values.get(k) or {}, k) for k, cls in sections.items()}
    return {"model": model, **built, "name": values.get("name", name)}


def preset_names(kind: str = "tokenizer") -> list[str]:
    """Config presets of a trainer kind: the YAML files of `magvit2/train/configs/<kind>/`."""
    if kind not in KINDS:
        raise ValueError(f"preset_names: kind must be one of {KINDS}, got {kind!r}")
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f)  # safe_load: a config file cannot construct Python objects
    return values or {}


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=2e-4' -> (['optim', 'lr'], 0.0002); the value is parsed as YAML (numbers, lists, null)."""
    import yaml

    if "=" not in text:
        raise ValueError(f"override {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def read_config_values(source: str | os.PathLike, overrides: list[str] = (), kind: str = "tokenizer") -> dict:
    """A YAML file path or a preset name of `kind` (`magvit2/train/configs/<kind>/<name>.yaml`), then
    `section.key=value` overrides, as a plain mapping."""
    path = Path(source)
    if not path.is_file():
        names = preset_names(kind)
        if str(source) not in names:
            raise FileNotFoundError(f"--config {source!r}: no such file and no such preset ({', '.join(names)})")
        path = CONFIG_DIR / kind / f"{source}.yaml"
    values = read_yaml(path)
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return values
