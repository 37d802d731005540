"""Backend registry: which implementation serves each op on each device type, chosen once at import.

Order per device type (first that loads wins):
    cpu:    cpu_ext -> reference
    cuda:   cuda_ext -> triton -> reference
    others: reference            (npu, mps, xpu, ...)

A backend loads only where it can run: cpu_ext when magvit2._C has CPU kernels; cuda_ext when magvit2._C_cuda
(built by setup.py with a CUDA torch and toolkit, see README) imports and has CUDA kernels; triton when triton
imports, a CUDA device exists and triton can drive it (`torch.utils._triton.has_triton()`), or TRITON_INTERPRET=1 is
set (the interpreter: slow, for debugging kernels on a CUDA machine). Without a CUDA device Triton never serves
automatically: CPU tensors have the C++ kernels, and the tests call the interpreted kernels directly
(magvit2/ops/triton). Each backend declares what it covers; inputs outside that (e.g. float64 entropy under triton)
go to the reference inside the same kernel registration.

`MAGVIT2_BACKEND` forces a choice: a bare name (`reference`, `cpu_ext`, `triton`) applies to every device type whose
table lists it; `cpu:reference,cuda:triton` names one per device type. An automatic pick that ends on the reference
although the device is present warns once; a forced pick that cannot load raises with the reason. A device type
with no device present takes the reference silently (the reasons stay in the table). `magvit2 info` prints it.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from magvit2.ops._library import CUDA_OPS, OPS, qualname

ENV = "MAGVIT2_BACKEND"
ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu_ext", "reference"),
    "cuda": ("cuda_ext", "triton", "reference"),
    "*": ("reference",),
}
DEVICE_TYPES = ("cpu", "cuda", "npu")
DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA"}
EVERY_INPUT = "every input"


class Unsupported(ImportError):
    """The installed torch cannot run this backend at all (e.g. no CUDA build): skipped without a warning."""


@dataclass(frozen=True)
class Choice:
    backend: str
    reason: str


def _order(device_type: str) -> tuple[str, ...]:
    return ORDER.get(device_type, ORDER["*"])


def known_backends() -> set[str]:
    return {name for order in ORDER.values() for name in order}


def parse_env(value: str | None) -> dict[str, str]:
    """`MAGVIT2_BACKEND` -> {device_type or '*': backend}. Raises ValueError naming the variable on bad input."""
    if not value:
        return {}
    forced: dict[str, str] = {}
    for part in value.split(","):
        part = part.strip()
        device, _, name = part.rpartition(":")
        device = device or "*"
        if name not in known_backends():
            raise ValueError(f"{ENV}={value!r}: unknown backend {name!r}; valid: {sorted(known_backends())}")
        if device != "*" and name not in _order(device):
            raise ValueError(f"{ENV}={value!r}: backend {name!r} cannot serve device type {device!r}")
        forced[device] = name
    return forced


def _load_cpu_ext() -> str:
    importlib.import_module("magvit2._C")
    missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(qualname(op), "CPU")]
    if missing:
        raise ImportError(f"magvit2._C has no CPU kernel for {missing} (stale build? reinstall the package)")
    return f"compiled extension magvit2._C ({torch.get_num_threads()} threads)"


_TRITON_CUDA = False  # set once the Triton kernels are the CUDA kernels (they are then no evidence of cuda_ext)


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device (torch.cuda.is_available() is False)")


def _load_cuda_ext() -> str:
    if not torch.version.cuda:
        raise Unsupported(f"torch {torch.__version__} is built without CUDA")
    try:
        importlib.import_module("magvit2._C_cuda")
    except ImportError as exc:
        raise ImportError(f"magvit2._C_cuda is not built ({exc}); see README, CUDA kernels") from exc
    missing = [op for op in CUDA_OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(qualname(op), "CUDA")]
    if missing or _TRITON_CUDA:
        raise ImportError(f"magvit2._C_cuda has no CUDA kernel for {missing} (stale build? reinstall the package)")
    return f"compiled extension magvit2._C_cuda (CUDA {torch.version.cuda})"


def _load_triton() -> str:
    global _TRITON_CUDA
    _require_cuda()
    try:
        import triton  # noqa: F401  (the package, not magvit2.ops.triton)
    except ImportError as exc:
        raise ImportError(f"triton is not installed ({exc}); `pip install triton`") from exc
    from torch.utils._triton import has_triton
    from triton import knobs

    if not knobs.runtime.interpret and not has_triton():
        raise RuntimeError("triton cannot compile for this GPU (torch.utils._triton.has_triton() is False)")
    kernels = importlib.import_module("magvit2.ops.triton")
    kernels.register_cuda()
    _TRITON_CUDA = True
    mode = ", interpreted (TRITON_INTERPRET=1)" if kernels.INTERPRET else ""
    return f"Triton {kernels.VERSION} kernels (magvit2/ops/triton){mode}"


def _triton_coverage(op: str) -> str:
    kernels = importlib.import_module("magvit2.ops.triton")
    return kernels.COVERAGE[op].text if op in kernels.COVERAGE else "nothing"


@dataclass(frozen=True)
class Backend:
    """`load()` registers the kernels and returns why this backend serves (raises with why it cannot);
    `coverage(op)` says which inputs of `op` it runs itself (the rest goes to the reference)."""

    load: Callable[[], str]
    coverage: Callable[[str], str]


BACKENDS: dict[str, Backend] = {
    "cpu_ext": Backend(_load_cpu_ext, lambda op: EVERY_INPUT),
    "cuda_ext": Backend(_load_cuda_ext, lambda op: EVERY_INPUT),
    "triton": Backend(_load_triton, _triton_coverage),
    "reference": Backend(lambda: "plain-torch reference (magvit2/ops/reference.py)", lambda op: EVERY_INPUT),
}


def select(env_value: str | None = None) -> dict[str, Choice]:
    """Load backends and return the choice per device type. Registration is global, so this runs once."""
    forced = parse_env(env_value)
    table: dict[str, Choice] = {}
    fallbacks: list[str] = []
    for device in DEVICE_TYPES:
        name = forced.get(device) or (forced.get("*") if forced.get("*") in _order(device) else None)
        if name is not None:
            try:
                table[device] = Choice(name, f"forced by {ENV}; " + BACKENDS[name].load())
            except Exception as exc:
                raise RuntimeError(f"{ENV} asks for {name!r} on {device}, which cannot run: {exc}") from exc
            continue
        skipped = []
        for candidate in _order(device):
            try:
                table[device] = Choice(candidate, BACKENDS[candidate].load() + "".join(f"; {s}" for s in skipped))
                break
            except Exception as exc:
                skipped.append(f"{candidate} unavailable: {exc}")
        if skipped and table[device].backend == "reference" and device_available(device):
            fallbacks.append(f"{device}: {'; '.join(skipped)}")
    if fallbacks:
        warnings.warn(
            "magvit2: falling back to the plain-torch reference (" + " | ".join(fallbacks) + ")",
            RuntimeWarning,
            stacklevel=3,
        )
    return table


_TABLE: dict[str, Choice] = {}


def init() -> None:
    _TABLE.update(select(os.environ.get(ENV)))


def table() -> dict[str, Choice]:
    return dict(_TABLE)


def serving(op: str, device_type: str) -> str:
    """Name of the backend that serves `op` on `device_type`, read back from the dispatcher."""
    key = DISPATCH_KEY.get(device_type)
    if key and torch._C._dispatch_has_kernel_for_dispatch_key(qualname(op), key):
        return _TABLE.get(device_type, Choice("reference", "")).backend
    return "reference"


def device_available(device_type: str) -> bool:
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return torch.cuda.is_available()
    module = getattr(torch, device_type, None)
    return bool(module is not None and getattr(module, "is_available", lambda: False)())


def info_lines() -> list[str]:
    """Human-readable table for `magvit2 info`."""
    lines = [
        f"torch {torch.__version__}   {ENV}={os.environ.get(ENV, '') or '(unset)'}",
        f"{'op':<22}{'device':<8}{'available':<11}{'backend':<11}why",
    ]
    for op in OPS:
        for device in DEVICE_TYPES:
            choice = _TABLE.get(device, Choice("reference", ""))
            name = serving(op, device)
            why = choice.reason if name == choice.backend else "no device kernel registered; reference serves"
            coverage = BACKENDS[name].coverage(op)
            if coverage != EVERY_INPUT:
                why += f"; serves {coverage}, the reference the rest"
            avail = "yes" if device_available(device) else "no"
            lines.append(f"{op:<22}{device:<8}{avail:<11}{name:<11}{why}")
    return lines
