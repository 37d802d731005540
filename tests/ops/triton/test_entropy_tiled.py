"""Triton lfq_entropy_tiled against the plain-torch tiled reference evaluated in float64, with tiles smaller than M
so that the tile loops (over M's rows and columns, and over the tokens) run more than once."""

import pytest
import torch

from magvit2.ops import reference
from magvit2.ops.triton import entropy_tiled
from tests.tolerance import GRAD_TOL
from tests.tolerance import assert_close_scaled as close

# (N, K, t, eps, tile): K = 10 with 16-wide tiles is 2 x 2 tiles of M; N = 150 is two token chunks in the interpreter.
CASES = [(20, 5, 2.0, 0.0, 0), (33, 10, 30.0, 1e-5, 16), (150, 9, 100.0, 1e-5, 16), (3, 1, 1.0, 1e-5, 0)]


@pytest.mark.parametrize("n, k, t, eps, tile", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_matches_float64_reference(n, k, t, eps, tile, dtype, device):
    z = (torch.randn(n, k, dtype=torch.float64) * (0.5 / t**0.5)).to(dtype).to(device)
    ps, cb, grad = entropy_tiled.lfq_entropy_tiled(z, t, eps, True, tile)
    want_ps, want_cb, want_grad = reference.lfq_entropy_tiled(z.double().cpu(), t, eps, True, 0)
    assert ps.dtype == cb.dtype == grad.dtype == torch.float32 and grad.shape == z.shape
    close(ps, want_ps, rtol=1e-4, atol=1e-6)
    close(cb, want_cb, rtol=1e-4, atol=1e-6)
    close(grad, want_grad, **GRAD_TOL[torch.float32])
    ps2, cb2, none = entropy_tiled.lfq_entropy_tiled(z, t, eps, False, tile)
    assert none.shape == (0, k) and float(cb2) == float(cb) and float(ps2) == float(ps)


def test_twenty_bits_and_empty(device):
    """K = 20 (the largest the whole-average op takes by default) in 256-wide tiles: 4 x 4 tiles of M; and N = 0."""
    z = (torch.randn(6, 20, dtype=torch.float64) * 0.05).float().to(device)
    ps, cb, grad = entropy_tiled.lfq_entropy_tiled(z, 100.0, 1e-5, True, 256)
    want_ps, want_cb, want_grad = reference.lfq_entropy_tiled(z.double().cpu(), 100.0, 1e-5, True, 0)
    close(ps, want_ps, rtol=1e-4, atol=1e-6)
    close(cb, want_cb, rtol=1e-4, atol=1e-6)
    close(grad, want_grad, **GRAD_TOL[torch.float32])
    ps, cb, grad = entropy_tiled.lfq_entropy_tiled(torch.empty(0, 7, device=device), 10.0, 1e-5, True, 0)
    assert float(ps) == 0.0 and float(cb) == 0.0 and grad.shape == (0, 7)


def test_float64_is_not_taken(device):
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        entropy_tiled.lfq_entropy_tiled(torch.zeros(2, 3, dtype=torch.float64, device=device), 1.0, 0.0, True, 0)
