"""CUDA kernels (magvit2._C_cuda) against the CPU kernels: bit-exact codes, indices and sampled tokens, entropies and
gradients within the dtype's tolerance, opcheck. Needs a GPU and the CUDA build (collected only on a CUDA machine;
the build itself is checked without a GPU by .ci/cuda_build_check.sh)."""

import math

import pytest
import torch

from magvit2 import ops
from magvit2.nn.ar import generate
from magvit2.ops import backends
from magvit2.ops._library import ops_with_kernels
from tests.tolerance import TOL

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def test_cuda_kernels_serve_every_op():
    for op in ops_with_kernels("cuda"):
        assert backends.serving(op, "cuda") == "cuda_ext"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "n, k, bits",
    [(0, 18, None), (1, 18, None), (4097, 18, None), (1023, 18, [6, 12]), (65, 62, None), (7, 70, [62, 8])],
    ids=lambda v: str(v),
)
def test_quantize_bit_exact(n, k, bits, dtype):
    z = torch.randn(n, k).to(dtype)
    if n >= 4:
        z[0, 0], z[1, 1], z[2, 2], z[3, 3] = 0.0, -0.0, float("nan"), float("inf")
    for x in (z, z.t().contiguous().t()):  # contiguous and column-major
        got, want = ops.lfq_quantize(x.cuda(), bits), ops.lfq_quantize(x, bits)
        assert torch.equal(got.codes.cpu(), want.codes)
        got_idx = got.indices if bits else (got.indices,)
        want_idx = want.indices if bits else (want.indices,)
        for g, w in zip(got_idx, want_idx, strict=True):
            assert torch.equal(g.cpu(), w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, k", [(1, 1), (33, 7), (4097, 18), (40000, 18), (257, 24)], ids=lambda v: str(v))
def test_entropy_and_gradient_match_cpu(n, k, dtype):
    z = (torch.randn(n, k) * 0.05).to(dtype)
    out = {}
    for device in ("cpu", "cuda"):
        x = z.to(device).requires_grad_()
        ps, cb = ops.lfq_entropy(x, 100.0, 1e-5)
        avg = ops.lfq_codebook_average(x, 100.0)
        (grad,) = torch.autograd.grad(ps - 0.5 * cb + (avg * avg).sum(), x)
        out[device] = [t.detach().cpu().double() for t in (ps, cb, avg, grad)]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for got, want, t in zip(out["cuda"], out["cpu"], [acc, acc, acc, dtype], strict=True):
        torch.testing.assert_close(got, want, **TOL[t])


def test_opcheck():
    z = torch.randn(65, 18, device="cuda") * 0.05
    torch.library.opcheck(torch.ops.magvit2.lfq_quantize.default, (z, [6, 12]))
    torch.library.opcheck(torch.ops.magvit2.lfq_entropy.default, (z.double().requires_grad_(), 30.0, 1e-5))
    logits = torch.randn(7, 4096, device="cuda")
    torch.library.opcheck(torch.ops.magvit2.sample_tokens.default, (logits, None, 1.0, 1.0, 50, 0.9, 3, 1))


SETTINGS = [
    dict(),
    dict(temperature=0.7),
    dict(temperature=1.3, top_k=50),
    dict(top_p=0.9),
    dict(top_k=100, top_p=0.8, temperature=1.1),
    dict(top_k=1),
    dict(top_k=5000),
    dict(top_p=0.01),
    dict(top_p=0.999),  # a nucleus of thousands of tokens
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, vocab", [(1, 1), (3, 2), (5, 1001), (64, 64), (7, 4096), (3, 2**18)], ids=str)
@pytest.mark.parametrize("cfg", [None, 1.9], ids=["nocfg", "cfg1.9"])
def test_sample_tokens_match_cpu_exactly(rows, vocab, dtype, cfg):
    g = torch.Generator().manual_seed(rows * vocab)
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
    uncond = (torch.randn(rows, vocab, generator=g) * 3).to(dtype) if cfg else None
    for i, s in enumerate(SETTINGS):
        kw = dict(s, cfg_scale=cfg or 1.0, seed=1234 + i, offset=7 * i)
        got = ops.sample_tokens(logits.cuda(), uncond=None if uncond is None else uncond.cuda(), **kw)
        want = ops.sample_tokens(logits, uncond=uncond, **kw)
        assert torch.equal(got.cpu(), want), (s, got, want)


def test_sample_tokens_ties_and_errors():
    tied = torch.randint(-2, 3, (16, 300)).float()
    tied[:, :7] = torch.tensor([0.0, -0.0, 2.0, 2.0, -0.0, 0.0, 2.0])
    for kw in (dict(top_k=1), dict(top_k=3), dict(top_p=0.5), dict(top_k=20, top_p=0.3)):
        assert torch.equal(ops.sample_tokens(tied.cuda(), seed=5, **kw).cpu(), ops.sample_tokens(tied, seed=5, **kw))
    # the top-p cut exactly at the limit (equal weights, p = 1/2), and within rounding of it: 1000 weights of ~2^-60
    # that vanish in the index-order sum but not in a block sum, so the guess from block sums must be corrected
    exact = torch.tensor([[0.0, -0.0, 0.0, -0.0]]).repeat(64, 1)
    near = torch.full((64, 1002), -60 * math.log(2.0))
    near[:, 0], near[:, 1] = 0.0, -math.log(2.0)
    for logits, top_p in ((exact, 0.5), (near, 1 - 1e-16)):
        got = ops.sample_tokens(logits.cuda(), top_p=top_p, seed=7).cpu()
        assert torch.equal(got, ops.sample_tokens(logits, top_p=top_p, seed=7))
    bad = torch.zeros(3, 10, device="cuda")
    bad[2, 4] = float("nan")
    bad[1] = float("-inf")
    with pytest.raises(ValueError, match="row 2 has NaN logits"):
        ops.sample_tokens(bad)
    bad[2, 4] = float("inf")
    with pytest.raises(ValueError, match="row 1 has no finite logit"):
        ops.sample_tokens(bad)


def test_sample_tokens_weights_at_the_exp_cutoff_and_guidance_nan():
    # wide logits: many x - max around the float32 exp's cutoff (-87), ties, -inf-masked tokens
    g = torch.Generator().manual_seed(87)
    logits = (torch.randn(6, 3000, generator=g) * 30).round()
    logits[1, 40:] = float("-inf")
    logits[2, ::3] = float("-inf")
    logits[3, 0], logits[3, 1:1500] = 0.0, -87.0  # x - max == -87: the lowest weight above the cutoff, tied
    logits[3, 1500:] = torch.linspace(-87.5, -86.5, 1500)
    for i, kw in enumerate([dict(), dict(top_k=50), dict(top_p=0.9), dict(top_k=300, top_p=0.8), dict(top_p=0.999)]):
        kw = dict(kw, seed=i, offset=3)
        assert torch.equal(ops.sample_tokens(logits.cuda(), **kw).cpu(), ops.sample_tokens(logits, **kw))
    logits, uncond = torch.zeros(4, 10, device="cuda"), torch.zeros(4, 10, device="cuda")
    logits[0] = float("-inf")  # no finite logit: reported after the guidance NaN of a later row
    logits[2, 4] = uncond[2, 4] = float("-inf")
    with pytest.raises(ValueError, match="row 2 has NaN logits after guidance"):
        ops.sample_tokens(logits, uncond=uncond, cfg_scale=1.9)


def test_decode_ops_run_the_reference_on_cuda_and_generate_matches_cpu():
    """decode_block / decode_logits have CPU kernels only: on CUDA the reference serves them, within float32
    rounding of the CPU kernel; a whole greedy generation gives the same tokens on both devices (float64)."""
    assert backends.serving("decode_block", "cuda") == "reference"
    g = torch.Generator().manual_seed(0)
    x, k, v = torch.randn(16, 256, generator=g), torch.randn(16, 4, 9, 64, generator=g), torch.randn(16, 4, 9, 64)
    w = [  # attention_norm, wqkv, wo, ffn_norm, w1, w3, w2 as a block holds them
        torch.rand(256, generator=g) + 0.5,
        torch.randn(768, 256) / 16,
        torch.randn(256, 256) / 16,
        torch.rand(256, generator=g) + 0.5,
        torch.randn(768, 256) / 16,
        torch.randn(768, 256) / 16,
        torch.randn(256, 768) / 28,
    ]
    rope, pos = torch.rand(9, 32, 2), torch.tensor(5)
    cpu = ops.decode_block(x, *w, k.clone(), v.clone(), rope, pos, 1e-5)
    gpu = ops.decode_block(x.cuda(), *(m.cuda() for m in w), k.cuda(), v.cuda(), rope.cuda(), pos.cuda(), 1e-5)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
    head, norm = torch.randn(4096, 256) / 16, w[0]
    torch.testing.assert_close(
        ops.decode_logits(x.cuda(), norm.cuda(), head.cuda(), 1e-5, 4.0).cpu(),
        ops.decode_logits(x, norm, head, 1e-5, 4.0),
        rtol=1e-4,
        atol=1e-4,
    )
    from magvit2.nn import ARTransformer

    torch.manual_seed(0)
    model = ARTransformer.from_preset("tiny").double().eval()
    for h in model.head:  # zero-initialised heads would make every greedy token 0
        torch.nn.init.normal_(h.weight, 0.0, 0.2)
    settings = dict(cfg=(1.9, 2.0), top_k=(1, 1), num_tokens=8)
    on_cpu = generate(model, torch.tensor([1, 4]), **settings)
    on_gpu = generate(model.cuda(), torch.tensor([1, 4]).cuda(), **settings)
    assert torch.equal(on_gpu.pre.cpu(), on_cpu.pre) and torch.equal(on_gpu.post.cpu(), on_cpu.post)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_triton_kernels_launch_on_the_inputs_gpu():
    """Triton launches on the current device: the registered kernels switch to the inputs' GPU first."""
    import magvit2.ops.triton as kernels
    from magvit2.ops import reference

    z = torch.randn(1000, 18, device="cuda:1")
    assert torch.cuda.current_device() == 0
    codes, indices = kernels.lfq_quantize_op(z, [6, 12])
    want_codes, want_indices = reference.lfq_quantize(z.cpu(), [6, 12])
    assert codes.device == z.device and torch.equal(indices.cpu(), want_indices)
    assert torch.equal(codes.cpu(), want_codes)
    tokens = kernels.sample_tokens_op(torch.randn(4, 64, device="cuda:1"), None, 1.0, 1.0, 1, 1.0, 0, 0)
    assert tokens.device == z.device
