"""Trainers on Lightning (tokenizer: GAN + perceptual + LFQ losses, EMA, DDP), their data and configs.

Nothing in `nn`, `ops` or `eval` imports this package; it needs the `train` extra (lightning, pyyaml).
"""

from magvit2.train.config import TrainConfig, config_from_dict, load_config, preset_names
from magvit2.train.ema import EMA
from magvit2.train.module import TokenizerModule

__all__ = ["EMA", "TokenizerModule", "TrainConfig", "config_from_dict", "load_config", "preset_names"]
