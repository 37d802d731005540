"""The `magvit2::triton_*` custom ops: opcheck, autograd, torch.compile(fullgraph=True), coverage fallback."""

import os
import subprocess
import sys

import pytest
import torch

import magvit2.ops.triton as kernels
from magvit2.ops import reference

ops = torch.ops.magvit2


def test_opcheck_quantize(device):
    z = torch.randn(9, 6, device=device)
    torch.library.opcheck(ops.triton_lfq_quantize.default, (z, [2, 4]))
    torch.library.opcheck(ops.triton_lfq_quantize.default, (z.t().contiguous().t(), [6]))  # column-major


def test_opcheck_entropy_and_backward(device):
    z = (torch.randn(8, 5, device=device) * 0.3).requires_grad_()
    torch.library.opcheck(ops.triton_lfq_entropy.default, (z, 3.0, 1e-5))
    avg = ops.triton_lfq_entropy(z.detach(), 3.0, 1e-5)[2]
    g = torch.tensor(0.5, device=device)
    torch.library.opcheck(ops.triton_lfq_entropy_backward.default, (g, g, None, z.detach(), avg, 3.0, 1e-5))
    torch.library.opcheck(ops.triton_lfq_entropy_backward.default, (g, g, avg * 0 + 1, z.detach(), avg, 3.0, 0.0))


def test_opcheck_sample_tokens(device):
    logits, uncond = torch.randn(2, 16, device=device), torch.randn(2, 16, device=device)
    torch.library.opcheck(ops.triton_sample_tokens.default, (logits, uncond, 1.5, 1.0, 5, 0.9, 3, 1))
    torch.library.opcheck(ops.triton_sample_tokens.default, (logits, None, 1.0, 0.5, 1, 1.0, 0, 0))


def test_autograd_matches_reference(device):
    z = (torch.randn(11, 6, dtype=torch.float64) * 0.3).float()
    mine = z.clone().to(device).requires_grad_()
    ref = z.double().requires_grad_()
    ps, cb, avg = ops.triton_lfq_entropy(mine, 5.0, 1e-5)
    (0.4 * ps - 1.1 * cb + (avg * avg).sum()).backward()
    rps, rcb, ravg = reference.lfq_entropy(ref, 5.0, 1e-5)
    (0.4 * rps - 1.1 * rcb + (ravg * ravg).sum()).backward()
    torch.testing.assert_close(mine.grad.double().cpu(), ref.grad, rtol=1e-4, atol=1e-5)
    mine.grad = None
    codes, _ = ops.triton_lfq_quantize(mine, [6])
    codes.sum().backward()  # sign() has no gradient (the straight-through estimator lives outside the op)
    assert mine.grad is None or not mine.grad.any()


def test_compile_fullgraph(device):
    z = (torch.randn(16, 6, device=device) * 0.2).requires_grad_()
    logits = torch.randn(3, 32, device=device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(z, logits):
        codes, indices = ops.triton_lfq_quantize(z, [2, 4])
        ps, cb, _ = ops.triton_lfq_entropy(z, 4.0, 1e-5)
        tokens = ops.triton_sample_tokens(logits * 2, None, 1.0, 1.0, 4, 0.9, 1, 2)
        return codes, indices, ps - cb, tokens

    codes, indices, loss, tokens = step(z, logits)
    loss.backward()
    want_codes, want_indices = reference.lfq_quantize(z.detach().cpu(), [2, 4])
    assert torch.equal(codes.cpu(), want_codes) and torch.equal(indices.cpu(), want_indices)
    assert torch.equal(tokens.cpu(), reference.sample_tokens(logits.cpu() * 2, None, 1.0, 1.0, 4, 0.9, 1, 2))
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_float64_entropy_goes_to_the_reference(device):
    """COVERAGE: the Triton kernels take float16/bfloat16/float32; float64 is served by the reference, exactly."""
    z = torch.randn(9, 7, dtype=torch.float64, device=device) * 0.2
    assert not kernels.COVERAGE["lfq_entropy"].serves(z, 1.0, 0.0)
    got = ops.triton_lfq_entropy(z, 3.0, 1e-5)
    want = reference.lfq_entropy(z, 3.0, 1e-5)
    assert got[0].dtype == torch.float64
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


@pytest.mark.parametrize("op", sorted(kernels.KERNELS))
def test_schemas_mirror_the_namespace(op):
    mine = getattr(ops, f"triton_{op}").default._schema
    theirs = getattr(ops, op).default._schema
    assert [(a.name, str(a.type)) for a in mine.arguments] == [(a.name, str(a.type)) for a in theirs.arguments]
    assert [str(r.type) for r in mine.returns] == [str(r.type) for r in theirs.returns]


def test_interpreter_switch_stays_out_of_the_environment(user_triton_interpret):
    """tests/conftest.py sets TRITON_INTERPRET for collection only: tests and their subprocesses see the user's."""
    assert os.environ.get("TRITON_INTERPRET") == user_triton_interpret
    child = "import os; print(os.environ.get('TRITON_INTERPRET'))"
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(user_triton_interpret)
