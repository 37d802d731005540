"""Shared test set-up: the Triton interpreter switch, a fixed seed per test."""

import os
import sys

import pytest
import torch


def _triton_needs_interpreter() -> bool:
    """Triton compiles only for a CUDA GPU of compute capability >= 7.0; elsewhere its kernels are interpreted."""
    return not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (7, 0))


# Triton reads TRITON_INTERPRET when it decorates a kernel, its own standard library included, i.e. at `import
# triton`, which collection may trigger from anywhere (lightning imports it). So the variable is set here, before
# collection, and taken back once collection is done (see below): the tests' subprocesses never see it.
_USER_INTERPRET = os.environ.get("TRITON_INTERPRET")
_SET_INTERPRET = _triton_needs_interpreter() and _USER_INTERPRET is None
if _SET_INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_finish(session):
    if _SET_INTERPRET:
        if "triton" in sys.modules:
            from triton import knobs

            # the interpreter also reads the knob while running (lazy imports): pin it for this process only
            knobs.runtime.interpret = True
        os.environ.pop("TRITON_INTERPRET", None)


@pytest.fixture
def user_triton_interpret() -> str | None:
    """TRITON_INTERPRET as the user's environment had it (what tests and their subprocesses must see)."""
    return _USER_INTERPRET


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
