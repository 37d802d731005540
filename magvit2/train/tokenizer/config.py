"""The tokenizer trainer's config: `model` (a tokenizer preset plus TokenizerConfig overrides), `loss` (LossConfig),
`optim`, `data` and `trainer` sections, from a YAML file or a preset of `magvit2/train/configs/tokenizer/`:
`open-magvit2-256-L` and `open-magvit2-128-L` reproduce the official recipes (reference §3.5), `tiny` trains on a
CPU in minutes, `digits` is the demo's. The video tokenizer (kind "video-tokenizer") trains on the same trainer with
a VideoTokenizerConfig model section and the presets of `magvit2/train/configs/video-tokenizer/`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from magvit2.nn.image.tokenizer import PRESETS, TokenizerConfig
from magvit2.nn.losses import LossConfig
from magvit2.nn.video.tokenizer import VIDEO_PRESETS, VideoTokenizerConfig
from magvit2.train.common.config import TrainerConfig, plain, read_config_values, sections_from_dict


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    lr_drop_epochs: tuple[int, ...] = ()  # lr x lr_drop_factor (both optimizers) at the end of these epochs
    lr_drop_factor: float = 0.1
    ema_decay: float = 0.999
    ema_warmup: bool = False  # decay min(ema_decay, (1 + n) / (10 + n)) after n updates (LitEma's num_updates)
    # "step": lr_drop_epochs (the image recipes); "cosine": the video recipe's linear warm-up from
    # warmup_start * lr over warmup_steps batches, then a cosine from lr to final_lr_ratio * lr at trainer.max_steps
    schedule: str = "step"
    warmup_steps: int = 0
    warmup_start: float = 0.0  # official wp0
    final_lr_ratio: float = 0.0  # official wpe

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        self.lr_drop_epochs = tuple(int(e) for e in self.lr_drop_epochs)
        for name in ("lr", "lr_drop_factor"):  # inf / nan would train on to non-finite weights
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"optim.{name} must be a finite number > 0, got {value!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if any(e < 0 for e in self.lr_drop_epochs):
            raise ValueError(f"optim.lr_drop_epochs must be epochs >= 0, got {self.lr_drop_epochs!r}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"optim.schedule must be 'step' or 'cosine', got {self.schedule!r}")
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        for name in ("warmup_start", "final_lr_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"optim.{name} must be a number in [0, 1], got {value!r}")


@dataclasses.dataclass
class DataConfig:
    train: str | None = None  # image folder (ImageNet layout root/train/<class>/*, or any folder of images)
    val: str | None = None  # default: <train root>/val when the train folder is an ImageNet-layout root
    size: int = 256  # resize the shorter side, then random crop (train) / center crop (val)
    batch_size: int = 8  # per device
    val_batch_size: int = 8
    val_images: int | None = None  # evaluate on the first N validation images (None: all)
    num_workers: int = 4
    frames: int = 17  # video tokenizer: frames per clip (1 + a multiple of the model's temporal factor)
    frame_stride: int = 1  # video tokenizer: every frame_stride-th frame of the source

    def __post_init__(self) -> None:
        for name in ("size", "batch_size", "val_batch_size", "frames", "frame_stride"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.val_images is not None and (not isinstance(self.val_images, int) or self.val_images < 1):
            raise ValueError(f"data.val_images must be a positive int or null (all), got {self.val_images!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"data.num_workers must be an int >= 0, got {self.num_workers!r}")


@dataclasses.dataclass
class InitConfig:
    """Initialisation of a video tokenizer run (the official `image_pretrain_path`): an image tokenizer checkpoint
    (official .ckpt or ours) whose weights are inflated into the video model at the start of a fresh run (not on
    resume); its EMA weights (when the file has them) become the EMA's starting point, as the official inflates
    `model_ema` too."""

    inflate_from: str | None = None

    def __post_init__(self) -> None:
        if self.inflate_from is not None and not isinstance(self.inflate_from, str):
            raise ValueError(f"init.inflate_from must be a path or null, got {self.inflate_from!r}")


@dataclasses.dataclass
class TrainConfig:
    model: dict[str, Any]  # {"preset": name, **TokenizerConfig overrides}
    loss: LossConfig
    optim: OptimConfig
    data: DataConfig
    trainer: TrainerConfig
    init: InitConfig = dataclasses.field(default_factory=InitConfig)
    name: str = "tokenizer"
    kind: str = "tokenizer"  # or "video-tokenizer"

    @property
    def video(self) -> bool:
        return self.kind == VIDEO_KIND

    def tokenizer_config(self) -> TokenizerConfig:
        return (VideoTokenizerConfig if self.video else TokenizerConfig).from_section(self.model)

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


SECTIONS = {"loss": LossConfig, "optim": OptimConfig, "data": DataConfig, "trainer": TrainerConfig, "init": InitConfig}
VIDEO_KIND = "video-tokenizer"


def config_from_dict(values: dict[str, Any], kind: str | None = None) -> TrainConfig:
    """Build and check a TrainConfig; every section is optional except that the trainer needs a length. `kind`
    ("tokenizer" or "video-tokenizer"): the medium, else the mapping's own "kind" (a stored config's), else images."""
    values = dict(values) if isinstance(values, dict) else values
    stored = values.pop("kind", None) if isinstance(values, dict) else None
    kind = kind or stored or "tokenizer"
    if kind not in ("tokenizer", VIDEO_KIND):
        raise ValueError(f"kind must be 'tokenizer' or '{VIDEO_KIND}', got {kind!r}")
    fields, presets = (VideoTokenizerConfig, VIDEO_PRESETS) if kind == VIDEO_KIND else (TokenizerConfig, PRESETS)
    parts = sections_from_dict(values, model_fields=fields, presets=presets, sections=SECTIONS, name=kind)
    config = TrainConfig(**parts, kind=kind)
    try:
        config.tokenizer_config()
    except (TypeError, ValueError) as e:
        raise ValueError(f"model: {e}") from None
    if config.init.inflate_from is not None and not config.video:
        raise ValueError("init.inflate_from: inflation initialises a video tokenizer (magvit2 train video-tokenizer)")
    if config.optim.schedule == "cosine" and config.trainer.max_steps == -1:
        raise ValueError("optim.schedule 'cosine' needs trainer.max_steps (the step the cosine ends at)")
    return config


def load_config(source: str | os.PathLike, overrides: list[str] = (), kind: str = "tokenizer") -> TrainConfig:
    """A tokenizer config of `kind` ("tokenizer" or "video-tokenizer"): YAML file or preset, then `section.key=value`
    overrides; checked."""
    return config_from_dict(read_config_values(source, overrides, kind=kind), kind)
