"""Triton kernels for the `magvit2::` ops, and their registration.

Importing this package needs triton (an optional dependency: `import magvit2` never imports it unless the backend
registry picks Triton for CUDA). It defines one custom op per kernel, `magvit2::triton_<op>`, with the schema of
`magvit2::<op>` (magvit2/ops/_library.py), the same fake kernel and, for the entropy, the same autograd formula,
so that opcheck and `torch.compile(fullgraph=True)` see them like any op (torch.library.triton_op would trace into
the kernels instead, which fails in interpreter mode). Each custom op serves what its kernel covers (COVERAGE) and
hands every other input to the plain-torch reference. `register_cuda()` makes them the CUDA kernels of the
`magvit2::` ops; the backend registry (magvit2/ops/backends.py) calls it.

With TRITON_INTERPRET=1 set before the import the kernels run in Triton's interpreter on CPU tensors: that is how
the tests compare them with the reference on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton

from magvit2.ops import reference
from magvit2.ops._library import (
    OPS,
    entropy_backward_through,
    entropy_setup,
    lib,
    quantize_backward,
    quantize_setup,
    tiled_backward,
    tiled_setup,
)
from magvit2.ops.triton import entropy, entropy_tiled, lfq, sampling
from magvit2.ops.triton._common import INTERPRET, device_guard

VERSION = triton.__version__
ENTROPY_DTYPES = entropy.SERVED_DTYPES


@dataclass(frozen=True)
class Coverage:
    """What a kernel serves: `serves(*op_args)` decides per call, `text` says it in words for `magvit2 info`."""

    text: str
    serves: Callable[..., bool]


COVERAGE: dict[str, Coverage] = {
    "lfq_quantize": Coverage(
        f"float16/bfloat16/float32/float64, K <= {lfq.MAX_CHANNELS}",
        lambda z, group_bits: z.shape[1] <= lfq.MAX_CHANNELS,
    ),
    "lfq_entropy": Coverage(
        "float16/bfloat16/float32 (float64: reference), K <= 24",
        lambda z, inv_temperature, eps: z.dtype in ENTROPY_DTYPES,
    ),
    "lfq_entropy_backward": Coverage(
        "float16/bfloat16/float32 (float64: reference), K <= 24",
        lambda grad_ps, grad_cb, grad_avg, z, avg, inv_temperature, eps: (
            z.dtype in ENTROPY_DTYPES and avg.dtype == torch.float32
        ),
    ),
    "lfq_entropy_tiled": Coverage(
        "float16/bfloat16/float32 (float64: reference), K <= 32",
        lambda z, inv_temperature, eps, need_grad, tile: z.dtype in ENTROPY_DTYPES,
    ),
    "sample_tokens": Coverage(
        "every float dtype, vocabulary < 2^31",
        lambda logits, *args: logits.shape[-1] < 2**31,
    ),
}

KERNELS = {
    "lfq_quantize": lfq.lfq_quantize,
    "lfq_entropy": entropy.lfq_entropy,
    "lfq_entropy_backward": entropy.lfq_entropy_backward,
    "lfq_entropy_tiled": entropy_tiled.lfq_entropy_tiled,
    "sample_tokens": sampling.sample_tokens,
}
REFERENCE = {op: getattr(reference, op) for op in KERNELS}


def dispatch(op: str) -> Callable:
    """The Triton kernel of `op` where COVERAGE serves the arguments, the reference elsewhere."""
    kernel, fallback, serves = KERNELS[op], REFERENCE[op], COVERAGE[op].serves

    def run(*args):
        if not serves(*args):
            return fallback(*args)
        with device_guard(args[0]):  # launches go to the inputs' GPU (cuda:1 too), not the current device
            return kernel(*args)

    run.__name__ = f"triton_{op}"
    return run


def _define(op: str):
    schema = OPS[op].schema[len(op) :]  # "(Tensor z, ...) -> ..." without the name
    custom = torch.library.custom_op(f"magvit2::triton_{op}", dispatch(op), mutates_args=(), schema=schema)
    custom.register_fake(OPS[op].fake)
    return custom


lfq_quantize_op = _define("lfq_quantize")
lfq_entropy_op = _define("lfq_entropy")
lfq_entropy_backward_op = _define("lfq_entropy_backward")
lfq_entropy_tiled_op = _define("lfq_entropy_tiled")
sample_tokens_op = _define("sample_tokens")
lfq_quantize_op.register_autograd(quantize_backward, setup_context=quantize_setup)
lfq_entropy_op.register_autograd(entropy_backward_through(lfq_entropy_backward_op), setup_context=entropy_setup)
lfq_entropy_tiled_op.register_autograd(tiled_backward, setup_context=tiled_setup)

_REGISTERED_CUDA: set[str] = set()


def register_cuda(ops: list[str] | None = None) -> list[str]:
    """Serve `magvit2::<op>` on CUDA tensors with these kernels, for `ops` (default: every op with a Triton kernel)
    that have one (idempotent); returns the ops of `ops` the Triton kernels serve."""
    wanted = [op for op in (KERNELS if ops is None else ops) if op in KERNELS]
    for op in wanted:
        if op not in _REGISTERED_CUDA:
            lib.impl(op, dispatch(op), "CUDA")
            _REGISTERED_CUDA.add(op)
    return wanted


def registered() -> set[str]:
    """The ops whose CUDA kernel is a Triton kernel."""
    return set(_REGISTERED_CUDA)


__all__ = [
    "COVERAGE",
    "INTERPRET",
    "KERNELS",
    "VERSION",
    "entropy",
    "entropy_tiled",
    "lfq",
    "register_cuda",
    "registered",
    "sampling",
]
