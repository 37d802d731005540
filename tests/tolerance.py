"""The one table of float tolerances the tests compare kernels with: by the dtype of the inputs.

Float results of a kernel differ from the reference's by summation order (float32 / float64 accumulation) and, for
16-bit outputs, by the final rounding; discrete outputs (codes, indices, tokens) are compared bit for bit instead.
"""

import torch

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-4),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-3),
}
# Gradients stored in a 16-bit z dtype: that dtype's rounding on top of float32 accumulation; atol is scaled by the
# largest |gradient| (see assert_close_scaled), since gradients span orders of magnitude.
GRAD_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


def tol(dtype: torch.dtype) -> dict:
    """Tolerance of a float result computed from inputs of this dtype."""
    return TOL[dtype]


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> None:
    """Element-wise closeness in float64 with atol relative to the largest |want|."""
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got.double().cpu(), want, rtol=rtol, atol=atol * max(scale, 1.0))
