"""magvit2: Open-MAGVIT2 (LFQ image tokenizer, factorized auto-regressive generation) with fused kernels."""

from magvit2 import ops

__version__ = "0.1.0"

__all__ = ["__version__", "ops"]
