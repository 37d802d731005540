"""Shared by the Triton kernels: interpreter detection, input checks and the device guard.

Triton decides at decoration time whether a kernel is compiled or interpreted (`TRITON_INTERPRET=1`), so the mode
is read once, here, when the kernel modules are imported. Interpreted kernels run on CPU tensors (tests compare them
with the reference on machines without a GPU); compiled ones need CUDA tensors.
"""

from __future__ import annotations

import contextlib

import torch
from triton import knobs

INTERPRET: bool = bool(knobs.runtime.interpret)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def check_device(fn: str, t: torch.Tensor) -> None:
    if not INTERPRET and t.device.type != "cuda":
        raise ValueError(
            f"{fn}: the compiled Triton kernels take CUDA tensors, got {t.device} "
            "(set TRITON_INTERPRET=1 before importing magvit2.ops.triton to interpret them on the CPU)"
        )


def device_guard(t: torch.Tensor):
    """Make `t`'s GPU the current device while a kernel launches (Triton launches on the current device): a no-op for
    CPU tensors (the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
