"""Triton kernel tests: compiled on CUDA tensors where triton can drive a GPU, interpreted on CPU tensors elsewhere.

tests/conftest.py sets TRITON_INTERPRET before anything imports triton (Triton decides per kernel, at decoration,
whether it is compiled or interpreted) and keeps it out of the environment once collection is over.
"""

import pytest
import torch

import magvit2.ops.triton as kernels

GPU = torch.cuda.is_available() and not kernels.INTERPRET
if not GPU and not kernels.INTERPRET:
    raise RuntimeError(
        "magvit2.ops.triton was compiled for a GPU but no CUDA device is usable: run the tests with "
        "TRITON_INTERPRET=1 (tests/conftest.py sets it when it runs before triton is imported)"
    )

DEVICE = "cuda" if GPU else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE
