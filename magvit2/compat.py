"""Drop-in replacements for other LFQ packages' modules, served by the magvit2 kernels.

`from magvit2.compat import LFQ` in place of `from vector_quantize_pytorch import LFQ` (same arguments, outputs and
state_dict keys; see magvit2/nn/compat.py). magvit2.LFQ keeps the official Open-MAGVIT2 conventions instead.
"""

from magvit2.nn.compat import LFQ

__all__ = ["LFQ"]
