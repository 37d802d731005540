"""Backend registry: which implementation serves each op on each device type, chosen once at import, op by op.

Order per device type (first that loads and has a kernel for the op wins):
    cpu:    cpu_ext -> reference
    cuda:   cuda_ext -> triton -> reference
    others: reference            (npu, mps, xpu, ...)

A backend loads only where it can run: cpu_ext when magvit2._C imports; cuda_ext when magvit2._C_cuda (built by
setup.py with a CUDA torch and toolkit, see README) imports; triton when triton imports, a CUDA device exists and
triton can drive it (`torch.utils._triton.has_triton()`), or TRITON_INTERPRET=1 is set (the interpreter: slow, for
debugging kernels on a CUDA machine). Without a CUDA device Triton never serves automatically: CPU tensors have the
C++ kernels, and the tests call the interpreted kernels directly (magvit2/ops/triton).

Coverage is per op: a backend is asked only for the ops that declare a kernel for its device type
(magvit2/ops/_library.py), and serves those it has a kernel for; the next backend in the order takes the rest. So a
CUDA-only op leaves every CPU op on cpu_ext, and a stale build that lacks one op loses only that op (with a warning).
Inside one op a backend may serve only some inputs (e.g. float64 entropy under triton goes to the reference inside
the same kernel registration); `coverage` says which.

`MAGVIT2_BACKEND` forces a choice: a bare name (`reference`, `cpu_ext`, `triton`) applies to every device type whose
table lists it; `cpu:reference,cuda:triton` names one per device type. An automatic pick that ends on the reference
for an op with a kernel for a present device warns once; a forced pick that cannot load raises with the reason. A
device type with no device present takes the reference silently (the reasons stay in the table). `magvit2 info`
prints it.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from magvit2.ops._library import OPS, qualname

ENV = "MAGVIT2_BACKEND"
ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu_ext", "reference"),
    "cuda": ("cuda_ext", "triton", "reference"),
    "*": ("reference",),
}
DEVICE_TYPES = ("cpu", "cuda", "npu")
EVERY_INPUT = "every input"
NONE = "none"  # an op with neither a kernel for the device type nor a reference


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


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname(op), key)


def _load_cpu_ext() -> str:
    try:
        importlib.import_module("magvit2._C")
    except ImportError as exc:
        # setup.py's PurePythonBuild leaves this file: the extension is absent on purpose, no fallback to warn about
        if (Path(__file__).resolve().parents[1] / "_pure_python").is_file():
            raise Unsupported("not built: a pure-Python install (MAGVIT2_BUILD_EXT=0)") from exc
        raise
    return f"compiled extension magvit2._C ({torch.get_num_threads()} threads)"


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
    return f"compiled extension magvit2._C_cuda (CUDA {torch.version.cuda})"


def _triton_kernels():
    return importlib.import_module("magvit2.ops.triton")


def _load_triton() -> str:
    _require_cuda()
    try:
        import triton  # noqa: F401  (the package, not magvit2.ops.triton)
    except ImportError as exc:
        raise ImportError(f"triton is not installed ({exc}); `pip install triton`") from exc
    from torch.utils._triton import has_triton
    from triton import knobs

    if not knobs.runtime.interpret and not has_triton():
        raise RuntimeError("triton cannot compile for this GPU (torch.utils._triton.has_triton() is False)")
    kernels = _triton_kernels()
    mode = ", interpreted (TRITON_INTERPRET=1)" if kernels.INTERPRET else ""
    return f"Triton {kernels.VERSION} kernels (magvit2/ops/triton){mode}"


def _extension_kernels(key: str) -> Callable[[list[str]], list[str]]:
    """The ops of `wanted` that a compiled extension registered for dispatch key `key` (registration happens at its
    import; kernels the Triton backend registered for CUDA are no evidence of cuda_ext)."""

    def registered(wanted: list[str]) -> list[str]:
        by_triton = _triton_kernels().registered() if key == "CUDA" and _triton_imported() else set()
        return [op for op in wanted if _has_kernel(op, key) and op not in by_triton]

    return registered


def _triton_imported() -> bool:
    return "magvit2.ops.triton" in sys.modules


def _register_triton(wanted: list[str]) -> list[str]:
    return _triton_kernels().register_cuda(wanted)


def _reference_kernels(wanted: list[str]) -> list[str]:
    return [op for op in wanted if _has_kernel(op, "CompositeExplicitAutograd")]


def _triton_coverage(op: str) -> str:
    kernels = _triton_kernels()
    return kernels.COVERAGE[op].text if op in kernels.COVERAGE else "nothing"


@dataclass(frozen=True)
class Backend:
    """`load()` makes the backend ready and returns why it serves (raises with why it cannot); `register(ops)` gives
    its kernels to those of `ops` it has one for and returns them; `coverage(op)` says which inputs of `op` it runs
    itself (the rest goes to the reference)."""

    load: Callable[[], str]
    register: Callable[[list[str]], list[str]]
    coverage: Callable[[str], str]


BACKENDS: dict[str, Backend] = {
    "cpu_ext": Backend(_load_cpu_ext, _extension_kernels("CPU"), lambda op: EVERY_INPUT),
    "cuda_ext": Backend(_load_cuda_ext, _extension_kernels("CUDA"), lambda op: EVERY_INPUT),
    "triton": Backend(_load_triton, _register_triton, _triton_coverage),
    "reference": Backend(
        lambda: "plain-torch reference (magvit2/ops/reference)", _reference_kernels, lambda op: EVERY_INPUT
    ),
}


@dataclass(frozen=True)
class DeviceTable:
    choice: Choice  # the first backend that serves an op here, and why
    ops: dict[str, str]  # op -> the backend serving it ("none": no kernel and no reference)
    missing: dict[str, str]  # op -> why its backend of choice lacks it (a stale build), for ops declared for here
    skipped: list[str]  # why the backends before the chosen ones could not load
    unsupported: frozenset[str] = frozenset()  # of those, the ones absent on purpose (Unsupported): no warning


def _select_device(device: str, forced: str | None) -> DeviceTable:
    if forced is None:
        candidates = _order(device)
    else:  # the reference takes the ops the forced backend has no kernel for (e.g. decode_ on cuda)
        candidates = (forced,) if forced == "reference" else (forced, "reference")
    pending = list(OPS)
    served: dict[str, str] = {}
    skipped: list[str] = []
    unsupported: set[str] = set()
    choice: Choice | None = None
    missing: dict[str, str] = {}
    for candidate in candidates:
        wanted = [op for op in pending if candidate == "reference" or device in OPS[op].kernels]
        if not wanted:
            continue
        try:
            reason = BACKENDS[candidate].load()
        except Exception as exc:
            if candidate == forced:
                raise RuntimeError(f"{ENV} asks for {forced!r} on {device}, which cannot run: {exc}") from exc
            skipped.append(f"{candidate} unavailable: {exc}")
            if isinstance(exc, Unsupported):
                unsupported.add(candidate)
            continue
        got = BACKENDS[candidate].register(wanted)
        if candidate == forced and not got and forced != "reference":
            raise RuntimeError(f"{ENV} asks for {forced!r} on {device}, which has no kernel for {wanted}")
        lacking = [op for op in wanted if op not in got and candidate != "reference"]
        for op in lacking:
            missing.setdefault(op, f"{candidate} has no {device} kernel for {op} (stale build? reinstall the package)")
        for op in got:
            served[op] = candidate
        if got and choice is None:
            prefix = f"forced by {ENV}; " if candidate == forced else ""
            choice = Choice(candidate, prefix + reason + "".join(f"; {s}" for s in skipped))
        pending = [op for op in pending if op not in got]
        if not pending:
            break
    for op in pending:
        served[op] = NONE
    if choice is None:
        choice = Choice("reference", "plain-torch reference" + "".join(f"; {s}" for s in skipped))
    return DeviceTable(choice, served, missing, skipped, frozenset(unsupported))


def select(env_value: str | None = None) -> dict[str, DeviceTable]:
    """Load backends and return the table per device type. Registration is global, so this runs once."""
    forced = parse_env(env_value)
    tables: dict[str, DeviceTable] = {}
    fallbacks: list[str] = []
    for device in DEVICE_TYPES:
        name = forced.get(device) or (forced.get("*") if forced.get("*") in _order(device) else None)
        tables[device] = t = _select_device(device, name)
        if name is not None or not device_available(device):
            continue
        lost = [op for op, backend in t.ops.items() if backend in ("reference", NONE) and device in OPS[op].kernels]
        if lost:
            reasons = sorted({t.missing[op] for op in lost if op in t.missing})
            if t.choice.backend == "reference":  # a backend absent on purpose (Unsupported) is no fallback
                reasons = [s for s in t.skipped if s.split(" ", 1)[0] not in t.unsupported] + reasons
            if reasons:
                fallbacks.append(f"{device}: {'; '.join(reasons)}")
    if fallbacks:
        warnings.warn(
            "magvit2: falling back to the plain-torch reference (" + " | ".join(fallbacks) + ")",
            RuntimeWarning,
            stacklevel=3,
        )
    return tables


_TABLES: dict[str, DeviceTable] = {}


def init() -> None:
    _TABLES.update(select(os.environ.get(ENV)))


def table() -> dict[str, Choice]:
    """Per device type: the backend that serves its ops (the first of the order that serves any), and why."""
    return {device: t.choice for device, t in _TABLES.items()}


def op_table() -> dict[str, dict[str, str]]:
    """Per device type: op -> the backend serving it."""
    return {device: dict(t.ops) for device, t in _TABLES.items()}


def serving(op: str, device_type: str) -> str:
    """Name of the backend that serves `op` on `device_type` ("reference" for a device type not in the table)."""
    t = _TABLES.get(device_type)
    return t.ops.get(op, "reference") if t is not None else "reference"


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
            t = _TABLES.get(device)
            choice = t.choice if t is not None else Choice("reference", "")
            name = serving(op, device)
            if name == NONE:
                why = f"no {device} kernel and no reference"
            elif name == choice.backend:
                why = choice.reason
            elif t is not None and op in t.missing:
                why = t.missing[op] + "; reference serves"
            else:
                why = "no device kernel registered; reference serves"
            if name != NONE:
                coverage = BACKENDS[name].coverage(op)
                if coverage != EVERY_INPUT:
                    why += f"; serves {coverage}, the reference the rest"
            avail = "yes" if device_available(device) else "no"
            lines.append(f"{op:<22}{device:<8}{avail:<11}{name:<11}{why}")
    return lines
