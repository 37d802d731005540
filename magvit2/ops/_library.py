"""The `magvit2::` op namespace: every schema, fake kernel and autograd formula, defined here once.

Kernels attach per dispatch key: the compiled extensions register `CPU` (csrc/cpu, magvit2._C) and `CUDA` (csrc/cuda,
magvit2._C_cuda), the Triton kernels register `CUDA` (magvit2/ops/triton); the plain-torch reference
(magvit2/ops/reference) is registered here as `CompositeExplicitAutograd`, so it serves every device type that has no
kernel of its own (NPU through torch_npu, MPS, XPU, and CPU/CUDA where no compiled kernel is selected).

Each op declares the device types it has compiled kernels for (`OpDef.kernels`): the backend registry
(magvit2/ops/backends.py) asks a backend only for the ops of its device type, op by op, so an op that exists for one
device alone never sends the other ops of another device to the reference. A new op is one `define` call here, a
typed wrapper, a reference function and its kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from magvit2.ops import reference

NAMESPACE = "magvit2"

lib = torch.library.Library(NAMESPACE, "DEF")


@dataclass(frozen=True)
class OpDef:
    schema: str
    kernels: tuple[str, ...]  # device types with compiled kernels ("cpu", "cuda"); the reference serves the rest
    fake: Callable | None = None  # the fake kernel (other registrations of the schema, e.g. Triton's, reuse it)


OPS: dict[str, OpDef] = {}


def qualname(op: str) -> str:
    return f"{NAMESPACE}::{op}"


def define(name: str, schema: str, *, kernels: tuple[str, ...], reference_fn=None, fake=None) -> None:
    """Declare `magvit2::<name>`: its schema, the device types whose backends bring kernels for it, and optionally
    the plain-torch reference (registered for every device type) and the fake kernel (for torch.compile)."""
    if name in OPS:
        raise ValueError(f"magvit2::{name} is already defined")
    lib.define(schema)
    OPS[name] = OpDef(schema, tuple(kernels), fake)
    if reference_fn is not None:
        lib.impl(name, reference_fn, "CompositeExplicitAutograd")
    if fake is not None:
        torch.library.register_fake(qualname(name), fake, lib=lib)


def ops_with_kernels(device_type: str) -> tuple[str, ...]:
    """The ops that declare a compiled kernel for `device_type`."""
    return tuple(op for op, d in OPS.items() if device_type in d.kernels)


# --- fake kernels (torch.compile / meta tracing); the Triton custom ops reuse them ------------------------------------


def fake_lfq_quantize(z, group_bits):
    return z.new_empty(z.shape), z.new_empty((len(group_bits), z.shape[0]), dtype=torch.int64)


def fake_lfq_entropy(z, inv_temperature, eps):
    ka, kb = reference.split_bits(z.shape[1])
    dtype = reference.opmath_dtype(z.dtype)
    return z.new_empty((), dtype=dtype), z.new_empty((), dtype=dtype), z.new_empty((2**ka, 2**kb), dtype=dtype)


def fake_lfq_entropy_tiled(z, inv_temperature, eps, need_grad, tile):
    dtype = reference.opmath_dtype(z.dtype)
    rows = z.shape[0] if need_grad else 0
    return z.new_empty((), dtype=dtype), z.new_empty((), dtype=dtype), z.new_empty((rows, z.shape[1]), dtype=dtype)


def fake_lfq_entropy_backward(grad_per_sample, grad_codebook, grad_avg, z, avg, inv_temperature, eps):
    return z.new_empty(z.shape)


def fake_sample_tokens(logits, uncond, cfg_scale, temperature, top_k, top_p, seed, offset):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


def fake_decode_block(x, attention_norm, wqkv, wo, ffn_norm, w1, w3, w2, k_cache, v_cache, rope, pos, eps):
    return x.new_empty(x.shape)


def fake_decode_logits(z, norm, head, eps, cfg_scale):
    rows = z.shape[0] // 2 if cfg_scale is not None else z.shape[0]
    return z.new_empty((rows, head.shape[0]))


# --- the ops ------------------------------------------------------------------------------------------------------

GPU_AND_CPU = ("cpu", "cuda")

# group_bits: bit counts of the index groups, summing to K (one group of K for a plain index).
# indices: (G, N) int64, row g = LSB-first index of group g.
define(
    "lfq_quantize",
    "lfq_quantize(Tensor z, int[] group_bits) -> (Tensor codes, Tensor indices)",
    kernels=GPU_AND_CPU,
    reference_fn=reference.lfq_quantize,
    fake=fake_lfq_quantize,
)
# Exact full-codebook LFQ entropies. avg = (2^Ka, 2^Kb) codebook average (code c = a + 2^Ka * b), Ka = ceil(K/2).
# The backward needs only z and avg: the per-token group probabilities are rebuilt, never stored.
define(
    "lfq_entropy",
    "lfq_entropy(Tensor z, float inv_temperature, float eps) -> (Tensor per_sample, Tensor codebook, Tensor avg)",
    kernels=GPU_AND_CPU,
    reference_fn=reference.lfq_entropy,
    fake=fake_lfq_entropy,
)
define(
    "lfq_entropy_backward",
    "lfq_entropy_backward(Tensor grad_per_sample, Tensor grad_codebook, Tensor? grad_avg, Tensor z, "
    "Tensor avg, float inv_temperature, float eps) -> Tensor",
    kernels=GPU_AND_CPU,
    reference_fn=reference.lfq_entropy_backward,
    fake=fake_lfq_entropy_backward,
)
# The tiled path (K <= 32): no average is returned. The forward walks M = P_A^T P_B / N tile by tile and, with
# need_grad, also returns codebook_grad = d codebook / dz (N, K) (the backward only scales it: three GEMMs in all,
# no tile recomputed); without need_grad it is an empty (0, K) tensor. tile: edge of M's tiles, 0 = automatic.
define(
    "lfq_entropy_tiled",
    "lfq_entropy_tiled(Tensor z, float inv_temperature, float eps, bool need_grad, int tile) -> "
    "(Tensor per_sample, Tensor codebook, Tensor codebook_grad)",
    kernels=GPU_AND_CPU,
    reference_fn=reference.lfq_entropy_tiled,
    fake=fake_lfq_entropy_tiled,
)
# Fused factorized sampling: guidance, temperature, top-k, top-p and a counter-based draw; (R,) int64 tokens.
define(
    "sample_tokens",
    "sample_tokens(Tensor logits, Tensor? uncond, float cfg_scale, float temperature, int top_k, float top_p, "
    "int seed, int offset) -> Tensor",
    kernels=GPU_AND_CPU,
    reference_fn=reference.sample_tokens,
    fake=fake_sample_tokens,
)
# One pre-norm transformer block for the newest position of R rows (a generation step's body); writes k, v at
# `pos` of the caches. Weights as the block holds them (RMSNorm weights, nn.Linear (out, in)). A CPU kernel only:
# on a GPU the step's tensor ops run as they are (the reference) or are captured whole (torch.compile, CUDA graphs).
define(
    "decode_block",
    "decode_block(Tensor x, Tensor attention_norm, Tensor wqkv, Tensor wo, Tensor ffn_norm, Tensor w1, Tensor w3, "
    "Tensor w2, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor rope, Tensor pos, float eps) -> Tensor",
    kernels=("cpu",),
    reference_fn=reference.decode_block,
    fake=fake_decode_block,
)
# The step's head: RMSNorm (weight `norm`), guidance over [cond; uncond] rows when cfg_scale is given, then the
# (vocab, dim) nn.Linear head. A CPU kernel only.
define(
    "decode_logits",
    "decode_logits(Tensor z, Tensor norm, Tensor head, float eps, float? cfg_scale) -> Tensor",
    kernels=("cpu",),
    reference_fn=reference.decode_logits,
    fake=fake_decode_logits,
)


# --- autograd -----------------------------------------------------------------------------------------------------


def quantize_setup(ctx, inputs, output):
    pass


def quantize_backward(ctx, grad_codes, grad_indices):
    # The derivative of sign() is 0 almost everywhere: no gradient flows (use a straight-through estimator).
    return None, None


def entropy_setup(ctx, inputs, output):
    z, inv_temperature, eps = inputs
    _, _, avg = output
    ctx.save_for_backward(z, avg)
    ctx.inv_temperature, ctx.eps = inv_temperature, eps


def entropy_backward_through(backward_op):
    """The autograd backward of an lfq_entropy op whose gradient is `backward_op` (same schema as
    magvit2::lfq_entropy_backward)."""

    def backward(ctx, grad_per_sample, grad_codebook, grad_avg):
        z, avg = ctx.saved_tensors
        zero = avg.new_zeros(())
        grad_z = backward_op(
            zero if grad_per_sample is None else grad_per_sample,
            zero if grad_codebook is None else grad_codebook,
            grad_avg,
            z,
            avg,
            ctx.inv_temperature,
            ctx.eps,
        )
        return grad_z, None, None

    return backward


def tiled_setup(ctx, inputs, output):
    z, inv_temperature, _, need_grad, _ = inputs
    _, _, codebook_grad = output
    ctx.save_for_backward(z, codebook_grad)
    ctx.inv_temperature, ctx.need_grad = inv_temperature, need_grad


def tiled_backward(ctx, grad_per_sample, grad_codebook, grad_codebook_grad):
    z, codebook_grad = ctx.saved_tensors
    grad = None
    if grad_per_sample is not None:
        grad = grad_per_sample * reference.per_sample_entropy_grad(z, ctx.inv_temperature)
    if grad_codebook is not None:
        if not ctx.need_grad:
            raise RuntimeError("lfq_entropy_tiled: the codebook gradient needs the forward to run with need_grad=True")
        grad = grad_codebook * codebook_grad if grad is None else grad + grad_codebook * codebook_grad
    return None if grad is None else grad.to(z.dtype), None, None, None, None


torch.library.register_autograd(qualname("lfq_entropy_tiled"), tiled_backward, setup_context=tiled_setup, lib=lib)
torch.library.register_autograd(qualname("lfq_quantize"), quantize_backward, setup_context=quantize_setup, lib=lib)
torch.library.register_autograd(
    qualname("lfq_entropy"),
    entropy_backward_through(torch.ops.magvit2.lfq_entropy_backward.default),
    setup_context=entropy_setup,
    lib=lib,
)
