"""magvit2: Open-MAGVIT2 (LFQ image and video tokenizers, factorized auto-regressive generation) with fused kernels."""

from magvit2 import nn, ops
from magvit2.checkpoints import load_ar_checkpoint, load_checkpoint
from magvit2.nn import LFQ, ARConfig, ARTransformer, Tokenizer, TokenizerConfig, VideoTokenizer, VideoTokenizerConfig

__version__ = "0.1.0"

__all__ = [
    "ARConfig",
    "ARTransformer",
    "LFQ",
    "Tokenizer",
    "TokenizerConfig",
    "VideoTokenizer",
    "VideoTokenizerConfig",
    "__version__",
    "load_ar_checkpoint",
    "load_checkpoint",
    "nn",
    "ops",
]
