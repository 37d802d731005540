"""lfq_entropy: exact against brute force over all 2^K codes, the official formula, gradcheck, opcheck, compile."""

import itertools

import pytest
import torch

from magvit2 import ops
from magvit2.ops import reference


def brute_force(z: torch.Tensor, t: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive softmax of 2 t <z, c> over every code c in {-1, 1}^K, float64."""
    z = z.double()
    k = z.shape[1]
    codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=k)), dtype=torch.float64)
    p = torch.softmax(2 * t * z @ codes.t(), dim=-1)
    per_sample = -(p * p.clamp_min(1e-300).log()).sum(-1).mean()
    avg = p.mean(0)
    return per_sample, -(avg * (avg + eps).log()).sum()


@pytest.mark.parametrize("eps", [0.0, 1e-5], ids=lambda e: f"eps{e}")
@pytest.mark.parametrize("t", [1.0, 100.0], ids=lambda t: f"t{t:g}")
@pytest.mark.parametrize("k", [1, 2, 3, 7, 10, 14], ids=lambda k: f"K{k}")
def test_brute_force(k, t, eps):
    n = 33 if k <= 10 else 9
    z = torch.randn(n, k, dtype=torch.float64) * (0.5 / t**0.5)
    per_sample, codebook = ops.lfq_entropy(z, t, eps)
    bf_ps, bf_cb = brute_force(z, t, eps)
    assert per_sample.dtype == torch.float64
    torch.testing.assert_close(per_sample, bf_ps, rtol=1e-6, atol=0)
    torch.testing.assert_close(codebook, bf_cb, rtol=1e-6, atol=0)


def test_official_formula_k18():
    z = torch.randn(16, 18, dtype=torch.float64) * 0.05
    per_sample, codebook = ops.lfq_entropy(z, 100.0, eps=1e-5)
    naive_ps, naive_cb = reference.lfq_entropy_naive(z, 100.0, eps=1e-5)
    torch.testing.assert_close(per_sample, naive_ps, rtol=1e-9, atol=0)
    torch.testing.assert_close(codebook, naive_cb, rtol=1e-9, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_inputs(dtype):
    z = (torch.randn(257, 18) * 0.05).to(dtype)
    got = ops.lfq_entropy(z, 100.0, 1e-5)
    want = ops.lfq_entropy(z.double(), 100.0, 1e-5)
    assert got.per_sample_entropy.dtype == torch.float32
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 4095, 4097, 9000], ids=lambda n: f"N{n}")
def test_matches_reference_across_chunks(n):
    """The kernel walks tokens in chunks of 4096: sizes around the chunk edge, forward and gradient."""
    z = (torch.randn(n, 12, dtype=torch.float64) * 0.1).requires_grad_()
    z_ref = z.detach().clone().requires_grad_()
    ps, cb = ops.lfq_entropy(z, 30.0, 1e-5)
    rps, rcb, _ = reference.lfq_entropy(z_ref, 30.0, 1e-5)
    torch.testing.assert_close(ps, rps, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cb, rcb, rtol=1e-10, atol=1e-12)
    if n:
        (ps - 2 * cb).backward()
        (rps - 2 * rcb).backward()
        torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 1e-5], ids=lambda e: f"eps{e}")
@pytest.mark.parametrize("k", [3, 6, 9], ids=lambda k: f"K{k}")
def test_gradcheck(k, eps):
    z = (torch.randn(7, k, dtype=torch.float64) * 0.5).requires_grad_()
    for combine in (lambda ps, cb: ps, lambda ps, cb: cb, lambda ps, cb: 0.3 * ps - 1.7 * cb):
        assert torch.autograd.gradcheck(lambda x, f=combine: f(*ops.lfq_entropy(x, 2.0, eps)), (z,))


def test_gradcheck_codebook_average():
    z = (torch.randn(5, 5, dtype=torch.float64) * 0.5).requires_grad_()
    weight = torch.randn(8, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: (ops.lfq_codebook_average(x, 3.0) * weight).sum(), (z,))


def test_gradient_equals_autograd_of_brute_force():
    z = (torch.randn(11, 8, dtype=torch.float64) * 0.2).requires_grad_()
    ps, cb = ops.lfq_entropy(z, 10.0, 1e-5)
    (g_ours,) = torch.autograd.grad(ps - cb, z)
    bps, bcb = brute_force(z, 10.0, 1e-5)
    (g_bf,) = torch.autograd.grad(bps - bcb, z)
    torch.testing.assert_close(g_ours, g_bf, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gradient_dtype_follows_input(dtype):
    z = (torch.randn(64, 10) * 0.1).to(dtype).requires_grad_()
    ps, cb = ops.lfq_entropy(z, 100.0, 1e-5)
    (ps - cb).backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad.float()).all()


def test_codebook_average_and_entropy():
    z = torch.randn(100, 11, dtype=torch.float64) * 0.1
    avg = ops.lfq_codebook_average(z, 50.0)
    assert avg.shape == (2**6, 2**5)
    torch.testing.assert_close(avg.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(ops.codebook_entropy(avg, 1e-5), ops.lfq_entropy(z, 50.0, 1e-5).codebook_entropy)
    # avg[a, b] is the probability of code a + 2^Ka b: check one entry against the brute-force distribution.
    codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=11)), dtype=torch.float64).flip(1)
    p = torch.softmax(2 * 50.0 * z @ codes.t(), dim=-1).mean(0)  # index of row j = sum_i bit_i 2^i
    torch.testing.assert_close(avg.t().reshape(-1), p)


OPCHECK_INPUTS = [
    ("lfq_quantize", lambda: (torch.randn(33, 18), [18])),
    ("lfq_quantize", lambda: (torch.randn(33, 18), [6, 12])),
    ("lfq_quantize", lambda: (torch.randn(18, 33).t().to(torch.bfloat16), [3, 4, 11])),
    ("lfq_entropy", lambda: ((torch.randn(33, 9, dtype=torch.float64) * 0.3).requires_grad_(), 2.0, 1e-5)),
    ("lfq_entropy", lambda: ((torch.randn(33, 10) * 0.3).requires_grad_(), 100.0, 0.0)),
]


@pytest.mark.parametrize("name,make", OPCHECK_INPUTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPCHECK_INPUTS)])
def test_opcheck(name, make):
    torch.library.opcheck(getattr(torch.ops.magvit2, name).default, make())


def test_opcheck_backward():
    z = torch.randn(33, 9, dtype=torch.float64) * 0.3
    _, _, avg = torch.ops.magvit2.lfq_entropy.default(z, 2.0, 1e-5)
    one = torch.tensor(1.0, dtype=torch.float64)
    torch.library.opcheck(torch.ops.magvit2.lfq_entropy_backward.default, (one, -one, None, z, avg, 2.0, 1e-5))
    torch.library.opcheck(
        torch.ops.magvit2.lfq_entropy_backward.default, (one, one * 0, torch.randn_like(avg), z, avg, 2.0, 0.0)
    )


def test_compile_fullgraph():
    def loss_fn(z):
        codes, idx = ops.lfq_quantize(z)
        ps, cb = ops.lfq_entropy(z, 100.0, 1e-5)
        quantized = z + (codes - z).detach()
        return (quantized**2).mean() + ps - cb, idx

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True)  # inductor: CPU code generated and compiled here
    z = (torch.randn(257, 18) * 0.05).requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    loss, idx = compiled(z)
    loss.backward()
    ref_loss, ref_idx = loss_fn(z2)
    ref_loss.backward()
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(z.grad, z2.grad)
