"""When modules check tensor values (index ranges, finite images) in their forward passes.

Shape and dtype checks always run: they read metadata only. A value check (`.min()`, `.any()`, `.item()`) makes the
host wait for the device, one sync per call, which stalls a GPU pipeline; so value checks run on CPU tensors, where
they cost nothing, and on other devices only with the debug switch: `MAGVIT2_DEBUG_CHECKS=1` in the environment or
`magvit2.nn.checks.set_debug_checks(True)`. Under torch.compile and on meta tensors they never run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import torch

ENV = "MAGVIT2_DEBUG_CHECKS"
_debug = os.environ.get(ENV, "0") not in ("", "0")


def set_debug_checks(enabled: bool) -> None:
    """Check tensor values on every device (True), or on CPU tensors only (False, the default)."""
    global _debug
    _debug = bool(enabled)


def debug_checks() -> bool:
    return _debug


def check_values(t: torch.Tensor) -> bool:
    """Whether a value check of `t` should run now (see the module docstring)."""
    if t.numel() == 0 or t.is_meta or torch.compiler.is_compiling():
        return False
    return t.device.type == "cpu" or _debug


def check_config_ints(config: object, bounds: dict[str, tuple[int, int]]) -> None:
    """One-line ValueError naming `<Config>.<field>` when a field of `bounds` is not an int in [low, high] (a bool
    is not an int here). The highs keep a mistyped value (`z_channels: 1e12`) from a huge allocation or a hang."""
    where = type(config).__name__
    for name, (low, high) in bounds.items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{where}.{name} must be an int in [{low}, {high}], got {value!r}")


def check_config_floats(config: object, names: tuple[str, ...]) -> None:
    """One-line ValueError naming `<Config>.<field>` when a field of `names` is not a finite number."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{type(config).__name__}.{name} must be a finite number, got {value!r}")


def non_finite_count(value: Any) -> int:
    """How many NaN/inf values a float tensor (or a Python float) holds; 0 for anything else. A NaN or inf makes the
    tensor's sum non-finite, so only then is it scanned element-wise (a sum can also overflow: the scan decides). The
    sums cost 0.06 s per GiB of float32 on one core; `isfinite(v).all()` on every tensor cost 4 s."""
    if isinstance(value, float):
        return 0 if math.isfinite(value) else 1
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() == 0:
        return 0
    total = value.sum(dtype=torch.float64 if value.dtype == torch.float64 else torch.float32)
    if bool(torch.isfinite(total)):
        return 0
    return int((~torch.isfinite(value)).sum())


def first_non_finite(items: Iterable[tuple[str, Any]]) -> tuple[str, int] | None:
    """(name, count) of the first item whose value holds NaN/inf (see non_finite_count), or None."""
    for name, value in items:
        bad = non_finite_count(value)
        if bad:
            return name, bad
    return None
