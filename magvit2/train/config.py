"""Training configuration: dataclasses with checked fields, read from YAML files or named presets.

A YAML file has the sections `model` (a tokenizer preset plus TokenizerConfig overrides), `loss` (LossConfig),
`optim`, `data` and `trainer`. Unknown keys are rejected with the list of valid ones. Presets live in
`magvit2/train/configs/`: `open-magvit2-256-L` and `open-magvit2-128-L` reproduce the official recipes (reference
§3.5), `tiny` trains on a CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from magvit2.nn.losses import LossConfig
from magvit2.nn.tokenizer import PRESETS, TokenizerConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    lr_drop_epochs: tuple[int, ...] = ()  # lr x lr_drop_factor (both optimizers) at the end of these epochs
    lr_drop_factor: float = 0.1
    ema_decay: float = 0.999
    ema_warmup: bool = False  # decay min(ema_decay, (1 + n) / (10 + n)) after n updates (LitEma's num_updates)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        self.lr_drop_epochs = tuple(int(e) for e in self.lr_drop_epochs)
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay!r}")


@dataclasses.dataclass
class DataConfig:
    train: str | None = None  # image folder (ImageNet layout root/train/<class>/*, or any folder of images)
    val: str | None = None  # default: <train root>/val when the train folder is an ImageNet-layout root
    size: int = 256  # resize the shorter side, then random crop (train) / center crop (val)
    batch_size: int = 8  # per device
    val_batch_size: int = 8
    val_images: int | None = None  # evaluate on the first N validation images (None: all)
    num_workers: int = 4

    def __post_init__(self) -> None:
        for name in ("size", "batch_size", "val_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be a positive int, got {getattr(self, name)!r}")


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

    def __post_init__(self) -> None:
        if self.val_every_n_steps is not None and (
            not isinstance(self.val_every_n_steps, int) or self.val_every_n_steps < 1
        ):
            raise ValueError(
                f"trainer.val_every_n_steps must be a positive int or null, got {self.val_every_n_steps!r}"
            )
        if not isinstance(self.max_nonfinite_skips, int) or self.max_nonfinite_skips < 0:
            raise ValueError(f"trainer.max_nonfinite_skips must be an int >= 0, got {self.max_nonfinite_skips!r}")
        if self.max_epochs == -1 and self.max_steps == -1:
            raise ValueError("trainer: set max_epochs or max_steps (both are -1)")
        if self.precision not in ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"):
            raise ValueError(f"trainer.precision must be 32-true, bf16-mixed or 16-mixed, got {self.precision!r}")


@dataclasses.dataclass
class TrainConfig:
    model: dict[str, Any]  # {"preset": name, **TokenizerConfig overrides}
    loss: LossConfig
    optim: OptimConfig
    data: DataConfig
    trainer: TrainerConfig
    name: str = "tokenizer"

    def tokenizer_config(self) -> TokenizerConfig:
        fields = dict(self.model)
        preset = fields.pop("preset", None)
        base = PRESETS[preset] if preset else TokenizerConfig()
        return dataclasses.replace(base, **fields)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


SECTIONS = {"loss": LossConfig, "optim": OptimConfig, "data": DataConfig, "trainer": TrainerConfig}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
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


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build and check a TrainConfig; every section is optional except that the trainer needs a length."""
    check_sections(values, list(SECTIONS))
    model = check_model_section(values.get("model") or {}, TokenizerConfig, PRESETS)
    built = {k: _build(cls, values.get(k) or {}, k) for k, cls in SECTIONS.items()}
    config = TrainConfig(model=model, name=values.get("name", "tokenizer"), **built)
    try:
        config.tokenizer_config()
    except (TypeError, ValueError) as e:
        raise ValueError(f"model: {e}") from None
    return config


def preset_names(kind: str = "tokenizer") -> list[str]:
    """Config presets of a trainer: "tokenizer", or "ar" (the files named open-magvit2-ar-* and ar-*)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if ("ar-" in p.stem) == (kind == "ar"))


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
    """A YAML file path or a preset name of `kind` (`magvit2/train/configs/<name>.yaml`), then `section.key=value`
    overrides, as a plain mapping."""
    path = Path(source)
    if not path.is_file():
        names = preset_names(kind)
        if str(source) not in names:
            raise FileNotFoundError(f"--config {source!r}: no such file and no such preset ({', '.join(names)})")
        path = CONFIG_DIR / f"{source}.yaml"
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


def load_config(source: str | os.PathLike, overrides: list[str] = ()) -> TrainConfig:
    """A tokenizer config: YAML file or preset, then `section.key=value` overrides; checked."""
    return config_from_dict(read_config_values(source, overrides))
