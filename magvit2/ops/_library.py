"""The `magvit2::` op namespace: every schema is defined here, once.

Kernels attach per dispatch key: the compiled extensions register `CPU` (csrc/cpu, magvit2._C) and `CUDA` (csrc/cuda,
magvit2._C_cuda); the plain-torch reference is registered as `CompositeExplicitAutograd`, so it serves every device
type that has no kernel of its own (NPU through torch_npu, MPS, XPU, and CPU/CUDA when their extension is not
selected).
"""

import torch

NAMESPACE = "magvit2"

lib = torch.library.Library(NAMESPACE, "DEF")

SCHEMAS = {
    # group_bits: bit counts of the index groups, summing to K (one group of K for a plain index).
    # indices: (G, N) int64, row g = LSB-first index of group g.
    "lfq_quantize": "lfq_quantize(Tensor z, int[] group_bits) -> (Tensor codes, Tensor indices)",
    # Exact full-codebook LFQ entropies. avg = (2^Ka, 2^Kb) codebook average (code c = a + 2^Ka * b), Ka = ceil(K/2).
    # The backward needs only z and avg: the per-token group probabilities are rebuilt, never stored.
    "lfq_entropy": (
        "lfq_entropy(Tensor z, float inv_temperature, float eps) -> (Tensor per_sample, Tensor codebook, Tensor avg)"
    ),
    "lfq_entropy_backward": (
        "lfq_entropy_backward(Tensor grad_per_sample, Tensor grad_codebook, Tensor? grad_avg, Tensor z, "
        "Tensor avg, float inv_temperature, float eps) -> Tensor"
    ),
    # Fused factorized sampling: guidance, temperature, top-k, top-p and a counter-based draw; (R,) int64 tokens.
    "sample_tokens": (
        "sample_tokens(Tensor logits, Tensor? uncond, float cfg_scale, float temperature, int top_k, float top_p, "
        "int seed, int offset) -> Tensor"
    ),
    # One pre-norm transformer block for the newest position of R rows (a generation step's body); writes k, v at
    # `pos` of the caches. Weights (in, out) or (out / 16, in, 16) panels, RMSNorm weights folded in. CPU kernel only.
    "decode_block": (
        "decode_block(Tensor x, Tensor wqkv, Tensor wo, Tensor w13, Tensor w2, Tensor(a!) k_cache, "
        "Tensor(b!) v_cache, Tensor rope, Tensor pos, float eps) -> Tensor"
    ),
    # The step's head: RMSNorm (weight folded into head), guidance over [cond; uncond] rows when cfg_scale is given,
    # then the (dim, vocab) projection. CPU kernel only.
    "decode_logits": "decode_logits(Tensor z, Tensor head, float eps, float? cfg_scale) -> Tensor",
}

for _schema in SCHEMAS.values():
    lib.define(_schema)

OPS = tuple(SCHEMAS)
# Ops with CUDA kernels (magvit2._C_cuda) and Triton kernels. The decode_ ops are CPU kernels: on a GPU the decode
# step's tensor ops run as they are (the reference), or are captured whole (torch.compile / CUDA graphs).
CUDA_OPS = tuple(op for op in OPS if not op.startswith("decode_"))


def qualname(op: str) -> str:
    return f"{NAMESPACE}::{op}"
