"""The kernel layer: public functional ops in the `magvit2::` namespace, backends chosen at import per op and device.

lfq_quantize(z, factorized_bits=None) -> (codes, indices)
lfq_entropy(z, inv_temperature=100.0, eps=0.0, group=None) -> (per_sample_entropy, codebook_entropy)
lfq_codebook_average(z, inv_temperature=100.0) -> (2^Ka, 2^Kb) average code distribution
codebook_entropy(avg, eps=0.0) -> -sum avg log(avg + eps)
sample_tokens(logits, *, uncond=None, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, seed=0, offset=0) -> (R,)
decode_block(x, attention_norm, wqkv, wo, ffn_norm, w1, w3, w2, k_cache, v_cache, rope, pos, eps) -> (R, dim): one
    block of a generation step, on the block's own weights
decode_logits(z, norm, head, eps, cfg_scale=None) -> logits of a generation step (norm, guidance, head)
"""

from magvit2.ops import _library, backends, reference  # noqa: F401  (schemas, fakes, autograd and the reference first)
from magvit2.ops.ar_decode import decode_block, decode_logits
from magvit2.ops.lfq import (
    LFQCodes,
    LFQEntropy,
    lfq_codebook_average,
    lfq_entropy,
    lfq_quantize,
)
from magvit2.ops.reference import codebook_entropy
from magvit2.ops.sampling import sample_tokens

backends.init()

__all__ = [
    "LFQCodes",
    "LFQEntropy",
    "backends",
    "codebook_entropy",
    "decode_block",
    "decode_logits",
    "lfq_codebook_average",
    "lfq_entropy",
    "lfq_quantize",
    "reference",
    "sample_tokens",
]
