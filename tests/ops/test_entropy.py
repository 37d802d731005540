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


# --- the tiled path (K <= 32 without the 2^K average) -----------------------------------------------------------------


def tiled(z: torch.Tensor, t: float, eps: float, tile: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(per_sample, codebook) of the tiled op, differentiable w.r.t. z."""
    ps, cb, _ = torch.ops.magvit2.lfq_entropy_tiled.default(z, t, eps, z.requires_grad, tile)
    return ps, cb


def factorized_float64(z: torch.Tensor, t: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The factorized form written out in float64 with the whole average M = P_A^T P_B / N, autograd for the
    gradient (independent of the kernels' tiles and hand-written gradient)."""
    x = 4 * t * z.double()
    q1, q0 = torch.sigmoid(x), torch.sigmoid(-x)
    ka = (z.shape[1] + 1) // 2
    per_sample = -(q1 * torch.log(q1) + q0 * torch.log(q0)).nan_to_num().sum(1).mean()
    p_a = reference.bit_group_probs(q0[:, :ka], q1[:, :ka])
    p_b = reference.bit_group_probs(q0[:, ka:], q1[:, ka:])
    m = p_a.t() @ p_b / z.shape[0]
    return per_sample, -torch.xlogy(m, m + eps).sum()


@pytest.mark.parametrize("tile", [1, 3, 8], ids=lambda t: f"tile{t}")
@pytest.mark.parametrize("eps", [0.0, 1e-5], ids=lambda e: f"eps{e}")
@pytest.mark.parametrize("k", [1, 2, 5, 10, 13], ids=lambda k: f"K{k}")
def test_tiled_brute_force(k, eps, tile):
    """Tiles of 1 and 3 entries leave ragged edges; 8 divides the widths. Value and gradient against autograd of the
    naive softmax over every code."""
    z = (torch.randn(9, k, dtype=torch.float64) * 0.1).requires_grad_()
    ps, cb = tiled(z, 10.0, eps, tile)
    bf_ps, bf_cb = brute_force(z, 10.0, eps)
    torch.testing.assert_close(ps, bf_ps, rtol=1e-9, atol=0)
    torch.testing.assert_close(cb, bf_cb, rtol=1e-9, atol=0)
    if k <= 10:
        (g,) = torch.autograd.grad(0.7 * ps - cb, z)
        (g_bf,) = torch.autograd.grad(0.7 * bf_ps - bf_cb, z)
        torch.testing.assert_close(g, g_bf, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("eps", [0.0, 1e-5], ids=lambda e: f"eps{e}")
@pytest.mark.parametrize("tile", [0, 5], ids=lambda t: f"tile{t}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k", [4, 11, 16], ids=lambda k: f"K{k}")
def test_tiled_equals_whole_average(k, dtype, tile, eps):
    """The tiled op and the whole-average op compute the same thing: values and gradients, every dtype (the float32
    kernel takes its own vectorized log; eps = 0 also takes its clamp at the smallest normal)."""
    z = (torch.randn(37, k) * 0.05).to(dtype).requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    ps, cb = tiled(z, 100.0, eps, tile)
    ps2, cb2, _ = torch.ops.magvit2.lfq_entropy.default(z2, 100.0, eps)
    tol = {"rtol": 1e-10, "atol": 0} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 0}
    torch.testing.assert_close(ps, ps2, **tol)
    torch.testing.assert_close(cb, cb2, **tol)
    (ps - 2 * cb).backward()
    (ps2 - 2 * cb2).backward()
    assert z.grad.dtype == dtype
    scale = z2.grad.double().abs().max().item()
    torch.testing.assert_close(
        z.grad.double(), z2.grad.double(), rtol=0, atol=1e-4 * scale if dtype != torch.float64 else 1e-10 * scale
    )


@pytest.mark.parametrize("eps", [0.0, 1e-5], ids=lambda e: f"eps{e}")
@pytest.mark.parametrize("k,tile", [(3, 1), (6, 3), (7, 4)], ids=lambda v: str(v))
def test_tiled_gradcheck(k, tile, eps):
    z = (torch.randn(6, k, dtype=torch.float64) * 0.5).requires_grad_()
    for combine in (lambda ps, cb: ps, lambda ps, cb: cb, lambda ps, cb: 0.3 * ps - 1.7 * cb):
        assert torch.autograd.gradcheck(lambda x, f=combine: f(*tiled(x, 2.0, eps, tile)), (z,))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("k", [19, 20, 22, 24], ids=lambda k: f"K{k}")
def test_large_codebooks_equal_float64_factorized(k):
    """float32 through ops.lfq_entropy (K > 20: the tiled path; K <= 20 on the tiled op as well) against the float64
    factorized form: values within 1e-5, the gradient of each term within 1e-4 (relative). Each term separately:
    in ps - cb the two gradients nearly cancel at t = 100, so the difference carries float32's rounding of each
    term amplified (about 2e-4 relative here, the whole-average kernel alike)."""
    torch.manual_seed(k)
    z = torch.randn(64, k) * 0.05
    z64 = z.double().requires_grad_()
    want = factorized_float64(z64, 100.0, 1e-5)
    want_grads = [torch.autograd.grad(w, z64, retain_graph=True)[0] for w in want]
    paths = [lambda x: ops.lfq_entropy(x, 100.0, 1e-5)] + ([lambda x: tiled(x, 100.0, 1e-5)] if k <= 20 else [])
    for path in paths:
        x = z.clone().requires_grad_()
        got = path(x)
        for value, grad_of, want_value, want_grad in zip(got, got, want, want_grads, strict=True):
            assert abs(value.item() - want_value.item()) <= 1e-5 * abs(want_value.item())
            (grad,) = torch.autograd.grad(grad_of, x, retain_graph=True)
            assert relative_error(grad, want_grad) <= 1e-4
            assert (grad.double() - want_grad).abs().max() <= 1e-4 * want_grad.abs().max()


def test_tiled_without_grad_returns_no_gradient_table():
    z = torch.randn(10, 22) * 0.05
    ps, cb, codebook_grad = torch.ops.magvit2.lfq_entropy_tiled.default(z, 100.0, 1e-5, False, 0)
    assert codebook_grad.shape == (0, 22)
    with torch.no_grad():
        assert torch.equal(ops.lfq_entropy(z.requires_grad_(), 100.0, 1e-5).codebook_entropy, cb)


def test_tiled_per_sample_gradient_alone():
    z = (torch.randn(12, 21, dtype=torch.float64) * 0.05).requires_grad_()
    ps, _ = ops.lfq_entropy(z, 100.0, 1e-5)
    (g,) = torch.autograd.grad(ps, z)
    want_ps, _ = factorized_float64(z, 100.0, 1e-5)
    (want,) = torch.autograd.grad(want_ps, z)
    torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-12)


TILED_OPCHECK_INPUTS = [
    lambda: ((torch.randn(17, 7, dtype=torch.float64) * 0.3).requires_grad_(), 2.0, 1e-5, True, 3),
    lambda: ((torch.randn(17, 10) * 0.3).requires_grad_(), 100.0, 0.0, True, 0),
    lambda: (torch.randn(17, 9) * 0.3, 100.0, 1e-5, False, 4),
]


@pytest.mark.parametrize("make", TILED_OPCHECK_INPUTS, ids=["f64-tile3", "f32-grad", "f32-nograd"])
def test_opcheck_tiled(make):
    torch.library.opcheck(torch.ops.magvit2.lfq_entropy_tiled.default, make())


def test_compile_fullgraph_tiled():
    """K = 21 takes the tiled op inside a compiled graph: same loss and gradient as eager."""

    def loss_fn(z):
        ps, cb = ops.lfq_entropy(z, 100.0, 1e-5)
        return ps - 2 * cb

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True)
    z = (torch.randn(33, 21) * 0.05).requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    loss = compiled(z)
    loss.backward()
    ref_loss = loss_fn(z2)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(z.grad, z2.grad)
