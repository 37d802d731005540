"""Plain-torch reference of every `magvit2::` op, one file per op family; magvit2/ops/_library.py registers them.

Tests and benchmarks import these to check and measure the compiled backends (C++, CUDA, Triton).
"""

from magvit2.ops.reference.ar_decode import decode_block, decode_logits
from magvit2.ops.reference.lfq import (
    binary_entropy_from_logits,
    bit_grad,
    bit_group_probs,
    codebook_entropy,
    codebook_entropy_grad,
    group_probs,
    index_to_bits,
    lfq_entropy,
    lfq_entropy_backward,
    lfq_entropy_naive,
    lfq_entropy_tiled,
    lfq_quantize,
    opmath_dtype,
    per_sample_entropy_grad,
    split_bits,
)
from magvit2.ops.reference.sampling import exp_det, sample_tokens, uniform

__all__ = [
    "binary_entropy_from_logits",
    "bit_grad",
    "bit_group_probs",
    "codebook_entropy",
    "codebook_entropy_grad",
    "decode_block",
    "decode_logits",
    "exp_det",
    "group_probs",
    "index_to_bits",
    "lfq_entropy",
    "lfq_entropy_backward",
    "lfq_entropy_naive",
    "lfq_entropy_tiled",
    "lfq_quantize",
    "opmath_dtype",
    "per_sample_entropy_grad",
    "sample_tokens",
    "split_bits",
    "uniform",
]
