"""Triton lfq_entropy forward and backward against the plain-torch reference (evaluated in float64).

The kernels read float16/bfloat16/float32 and accumulate in float32: the entropies and the average are float32
results (float32 tolerance); the gradient is stored in z's dtype (that dtype's rounding on top).
"""

import pytest
import torch

from magvit2.ops import reference
from magvit2.ops.triton import entropy
from tests.tolerance import GRAD_TOL
from tests.tolerance import assert_close_scaled as close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def latents(n: int, k: int, t: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    return (torch.randn(n, k, dtype=torch.float64) * (0.5 / t**0.5)).to(dtype).to(device)


CASES = [(20, 5, 2.0, 0.0), (3, 1, 1.0, 1e-5), (50, 9, 30.0, 1e-5), (1, 4, 3.0, 0.0)]


@pytest.mark.parametrize(
    "n, k, t, eps, dtype",
    [(*case, dtype) for case in CASES for dtype in DTYPES] + [(37, 18, 100.0, 1e-5, torch.float32)],
    ids=lambda v: str(v),
)
def test_forward_backward_match_reference(n, k, t, eps, dtype, device):
    z = latents(n, k, t, dtype, device)
    ps, cb, avg = entropy.lfq_entropy(z, t, eps)
    want_ps, want_cb, want_avg = reference.lfq_entropy(z.double().cpu(), t, eps)
    assert ps.dtype == cb.dtype == avg.dtype == torch.float32 and ps.shape == cb.shape == ()
    close(ps, want_ps, rtol=1e-4, atol=1e-6)
    close(cb, want_cb, rtol=1e-4, atol=1e-6)
    close(avg, want_avg, rtol=1e-4, atol=1e-6)
    g_ps, g_cb = torch.tensor(0.7), torch.tensor(-1.3)
    grad = entropy.lfq_entropy_backward(g_ps.to(device), g_cb.to(device), None, z, avg, t, eps)
    want = reference.lfq_entropy_backward(g_ps.double(), g_cb.double(), None, z.double().cpu(), want_avg, t, eps)
    assert grad.dtype == dtype and grad.shape == z.shape
    close(grad, want, **GRAD_TOL[dtype])


def test_gradient_of_the_average_and_strides(device):
    """grad_avg (a loss on the average itself, e.g. after an all-reduce), non-contiguous z, eps = 0."""
    base = torch.randn(12, 40, dtype=torch.float64) * 0.3
    z = base.t()[:, :7].float().to(device)  # (40, 7), strides (1, 40)
    assert not z.is_contiguous()
    ps, cb, avg = entropy.lfq_entropy(z, 2.0, 0.0)
    grad_avg = torch.randn(avg.shape)
    want_avg = reference.lfq_entropy(z.double().cpu(), 2.0, 0.0)[2]
    grad = entropy.lfq_entropy_backward(
        torch.tensor(0.0, device=device), torch.tensor(1.0, device=device), grad_avg.to(device), z, avg, 2.0, 0.0
    )
    want = reference.lfq_entropy_backward(
        torch.tensor(0.0).double(), torch.tensor(1.0).double(), grad_avg.double(), z.double().cpu(), want_avg, 2.0, 0.0
    )
    close(grad, want, rtol=1e-4, atol=1e-5)


def test_saturated_and_empty(device):
    """|x| large (probabilities exactly 0/1, the binary entropy's tails) and N = 0."""
    z = torch.tensor([[3.0, -2.0, 0.0, 1e-4], [-5.0, 0.5, -0.25, 2.0]], device=device)
    ps, cb, avg = entropy.lfq_entropy(z, 100.0, 1e-5)
    want_ps, want_cb, want_avg = reference.lfq_entropy(z.double().cpu(), 100.0, 1e-5)
    close(ps, want_ps, rtol=1e-4, atol=1e-6)
    close(cb, want_cb, rtol=1e-4, atol=1e-6)
    close(avg, want_avg, rtol=1e-4, atol=1e-6)
    empty = torch.empty(0, 6, device=device)
    ps, cb, avg = entropy.lfq_entropy(empty, 10.0, 1e-5)
    assert float(ps) == 0.0 and float(cb) == 0.0 and avg.shape == (8, 8) and not avg.any()
    assert entropy.lfq_entropy_backward(ps, cb, None, empty, avg, 10.0, 1e-5).shape == (0, 6)


def test_float64_is_not_taken(device):
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        entropy.lfq_entropy(torch.zeros(2, 3, dtype=torch.float64, device=device), 1.0, 0.0)
