"""The AR trainer's config: `model` (an AR preset plus ARConfig overrides), `optim`, `data` and `trainer` sections, from
a YAML file or a preset of `magvit2/train/configs/ar/` (open-magvit2-ar-B/L/XL reproduce the official recipes,
ar-tiny and ar-digits train on a CPU).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from magvit2.nn.ar.transformer import AR_PRESETS, ARConfig
from magvit2.train.common.config import TrainerConfig, plain, read_config_values, sections_from_dict


@dataclasses.dataclass
class AROptimConfig:
    lr: float = 3e-4  # peak
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05  # on parameters with >= 2 dims
    decay_norms: bool = False  # official quirk: after step 0 the norms (and every other group) get weight decay too
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # used when warmup_epochs is 0
    wp0: float = 0.005  # lr factor at step 0
    wpe: float = 0.1  # lr factor at the end
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optim.lr must be a finite number > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        for name in ("weight_decay", "grad_clip", "warmup_epochs", "wp0", "wpe"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"optim.{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")


@dataclasses.dataclass
class ARDataConfig:
    tokens: str | None = None  # folder written by `magvit2 encode` (factorized or full indices)
    images: str | None = None  # or an image folder (class = parent folder), tokenized on the fly by ...
    tokenizer: str | None = None  # ... this frozen tokenizer (our directory or a training/official checkpoint);
    # with tokens: the tokenizer that encoded them, where tokens.json's recorded path no longer holds it
    size: int = 256  # on the fly: shorter side resized to size, random size x size crop (official)
    batch_size: int = 24
    num_workers: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"data.batch_size must be a positive int, got {self.batch_size!r}")
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"data.size must be a positive int, got {self.size!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"data.num_workers must be an int >= 0, got {self.num_workers!r}")

    def check_source(self) -> None:
        """Exactly one source: token shards, or images with the tokenizer that encodes them."""
        if self.tokens is not None and self.images is not None:
            raise ValueError("data.tokens and data.images are both set: give token shards or images, not both")
        if self.tokens is None and self.images is None:
            raise ValueError(
                "data.tokens is not set: pass --data TOKENS (a folder written by magvit2 encode), or --data IMAGES "
                "with --tokenizer MODEL to tokenize on the fly"
            )
        if self.images is not None and self.tokenizer is None:
            raise ValueError(f"data.images={self.images}: tokens on the fly need data.tokenizer (--tokenizer MODEL)")


@dataclasses.dataclass
class ARTrainConfig:
    model: dict[str, Any]
    optim: AROptimConfig
    data: ARDataConfig
    trainer: TrainerConfig
    name: str = "ar"

    def ar_config(self) -> ARConfig:
        return ARConfig.from_section(self.model)

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


def load_ar_config(source: str | os.PathLike, overrides: list[str] = ()) -> ARTrainConfig:
    """An AR config: YAML file or preset (open-magvit2-ar-B/L/XL, ar-tiny), then `section.key=value` overrides."""
    values = read_config_values(source, overrides, kind="ar")
    sections = {"optim": AROptimConfig, "data": ARDataConfig, "trainer": TrainerConfig}
    config = ARTrainConfig(
        **sections_from_dict(values, model_fields=ARConfig, presets=AR_PRESETS, sections=sections, name="ar")
    )
    config.ar_config()
    return config
