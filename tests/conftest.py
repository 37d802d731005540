import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tol(dtype: torch.dtype) -> dict:
    """Tolerance of a float result computed from inputs of this dtype (the kernels accumulate in float32/64)."""
    return {torch.float64: dict(rtol=1e-10, atol=1e-12)}.get(dtype, dict(rtol=1e-4, atol=1e-5))
