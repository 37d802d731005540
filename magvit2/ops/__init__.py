"""The kernel layer: public functional ops in the `magvit2::` namespace, backends chosen at import per op and device.

lfq_quantize(z, factorized_bits=None) -> (codes, indices)
lfq_entropy(z, inv_temperature=100.0, eps=0.0, group=None) -> (per_sample_entropy, codebook_entropy)
lfq_codebook_average(z, inv_temperature=100.0) -> (2^Ka, 2^Kb) average code distribution
codebook_entropy(avg, eps=0.0) -> -sum avg log(avg + eps)
sample_tokens(logits, *, uncond=None, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, seed=0, offset=0) -> (R,)
decode_block(x, wqkv, wo, w13, w2, k_cache, v_cache, rope, pos, eps) -> (R, dim): one block of a generation step
decode_logits(z, head, eps, cfg_scale=None) -> logits of a generation step (norm, guidance, head)
decode_panels(w) -> a (in, out) weight as the 16-column panels the CPU decode kernels stream
decode_weight(linears, scale=None, *, panels) -> nn.Linear weights as one decode weight, written once
"""

from magvit2.ops import _library, backends, reference  # noqa: F401  (schemas, fakes, autograd and the reference first)
from magvit2.ops.ar_decode import decode_block, decode_logits, decode_panels, decode_weight
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
    "decode_panels",
    "decode_weight",
    "lfq_codebook_average",
    "lfq_entropy",
    "lfq_quantize",
    "reference",
    "sample_tokens",
]
