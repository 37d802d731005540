"""The tokenizer trainer (GAN + perceptual + LFQ losses, EMA): config, data, LightningModule, fit."""

from magvit2.train.tokenizer.config import TrainConfig, config_from_dict, load_config
from magvit2.train.tokenizer.fit import fit_tokenizer
from magvit2.train.tokenizer.module import TokenizerModule

__all__ = ["TokenizerModule", "TrainConfig", "config_from_dict", "fit_tokenizer", "load_config"]
