"""What every trainer's config shares: the `trainer` section (length, precision, devices, checkpoints) and the
reading of a run config: a YAML file or a preset of `magvit2/train/configs/<kind>/`, `section.key=value` overrides,
sections checked against their dataclasses (unknown keys are rejected with the list of valid ones).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

from magvit2.ops.threads import parse_threads

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
KINDS = ("tokenizer", "video-tokenizer", "ar")


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
        for name in ("max_epochs", "max_steps"):  # Lightning reads 0 and other negatives as something else again
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != -1):
                raise ValueError(f"trainer.{name} must be a positive int, or -1 (no limit), got {value!r}")
        for name, least in (("num_nodes", 1), ("log_every_n_steps", 1), ("checkpoint_every_n_steps", 1),
                            ("val_every_n_epochs", 1), ("image_every_n_steps", 0), ("grid_images", 0)):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"trainer.{name} must be an int >= {least}, got {value!r}")
        if isinstance(self.devices, bool) or not (
            (isinstance(self.devices, int) and self.devices >= 1) or isinstance(self.devices, str)
        ):
            raise ValueError(f"trainer.devices must be a positive int or 'auto', got {self.devices!r}")
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


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's type: int (not bool), float (int or float, finite), str, bool, a union with
    None, tuple[T, ...] / tuple[T, T] (a list or tuple of fitting items), dict, Any."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: the dataclass's own checks decide


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        item = {int: "ints", float: "finite numbers", str: "strings"}.get(args[0], str(args[0]))
        return f"a list of {item}" if len(args) == 2 and args[1] is Ellipsis else f"a list of {len(args)} {item}"
    return {int: "an int", float: "a finite number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def check_types(cls: type, values: dict[str, Any], where: str) -> None:
    """One-line ValueError naming `where.key` and the expected type for the first value of `values` that does not fit
    its field of dataclass `cls` (so a wrong type never reaches the dataclass as a raw TypeError)."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not _fits(value, hints[key]):
            raise ValueError(f"{where}.{key} must be {_describe(hints[key])}, got {value!r}")


def build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
    check_types(cls, values, where)
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
    check_types(fields_of, {k: v for k, v in model.items() if k != "preset"}, "model")
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


def _yaml_loader() -> type:
    """PyYAML's SafeLoader (a config cannot construct Python objects) that reads numbers as people write them: YAML
    1.1 takes `5e-4` and `1e5` (no dot, or no exponent sign) for strings, YAML 1.2 and everyone else for floats."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    number = r"^(?=[-+]?\.?[0-9])[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(number), list("-+0123456789."))
    return Loader


def load_yaml(text: Any) -> Any:
    """YAML text or stream -> Python values, with `_yaml_loader`'s number rules."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        values = load_yaml(f)
    return values or {}


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=2e-4' -> (['optim', 'lr'], 0.0002); the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), load_yaml(value)


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
