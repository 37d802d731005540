"""The class-conditional AR trainer (next-sub-token cross-entropy): config, data, LightningModule, fit."""

from magvit2.train.ar.config import ARTrainConfig, load_ar_config
from magvit2.train.ar.fit import fit_ar
from magvit2.train.ar.module import ARModule

__all__ = ["ARModule", "ARTrainConfig", "fit_ar", "load_ar_config"]
