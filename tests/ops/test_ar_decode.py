"""decode_block / decode_logits: the C++ kernel against the plain-torch reference (float32 within rounding, other
dtypes bit for bit), cache writes, the module's own weights read in place, tails of the matmul tiles, each vector
path (AVX-512, AVX2, the ATen calls: MAGVIT2_CPU_ISA), opcheck and argument errors."""

import os
import subprocess
import sys

import pytest
import torch

from magvit2 import ops
from magvit2.nn.ar.transformer import apply_rope
from magvit2.ops import backends
from magvit2.ops.reference import ar_decode as ref


def test_cpu_kernels_serve_the_ops():
    assert backends.serving("decode_block", "cpu") == "cpu_ext"
    assert backends.serving("decode_logits", "cpu") == "cpu_ext"


def _block_inputs(rows, heads, head_dim, hidden, length, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim = heads * head_dim

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    # as a transformer block holds them: attention_norm, wqkv, wo, ffn_norm, w1, w3, w2
    weights = [
        1 + rand(dim, scale=0.2),
        rand(3 * dim, dim, scale=dim**-0.5),
        rand(dim, dim, scale=dim**-0.5),
        1 + rand(dim, scale=0.2),
        rand(hidden, dim, scale=dim**-0.5),
        rand(hidden, dim, scale=dim**-0.5),
        rand(dim, hidden, scale=hidden**-0.5),
    ]
    caches = [rand(rows, heads, length, head_dim), rand(rows, heads, length, head_dim)]
    rope = torch.rand(length, head_dim // 2, 2, generator=g) * 2 - 1
    return rand(rows, dim), weights, caches, rope


# (rows, heads, head_dim, hidden, length, pos): 8 + 8 rows of the benchmark model; tails of the 6- and 2-row tiles
# (1, 5, 7 rows), of the 4-weight-row tiles (hidden 37, dim 10: 1-3 rows left) and of the 16- and 8-float vectors
# along `in` (dim 20, hidden 37, dim 2); pos at both ends of the cache
SHAPES = [
    (16, 4, 64, 768, 40, 17),
    (16, 4, 64, 768, 257, 256),
    (8, 4, 64, 768, 9, 0),
    (1, 1, 2, 3, 2, 1),
    (5, 2, 10, 37, 6, 0),
    (7, 2, 10, 37, 6, 5),
    (3, 3, 8, 16, 4, 2),
]
IDS = [f"r{r}-h{h}-d{d}-hid{hid}-S{s}-pos{p}" for r, h, d, hid, s, p in SHAPES]


def _run(fn, x, weights, caches, rope, pos, eps=1e-5):
    k, v = (c.clone() for c in caches)
    out = fn(x, *weights, k, v, rope, torch.tensor(pos), eps)
    return out, k, v


@pytest.mark.parametrize("rows, heads, head_dim, hidden, length, pos", SHAPES, ids=IDS)
def test_block_float32_matches_reference(rows, heads, head_dim, hidden, length, pos):
    x, weights, caches, rope = _block_inputs(rows, heads, head_dim, hidden, length, torch.float32)
    out, k, v = _run(ops.decode_block, x, weights, caches, rope, pos)
    want, k_ref, v_ref = _run(ref.decode_block, x, weights, caches, rope, pos)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(k, k_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-5)
    # only position `pos` of the caches changes
    keep = torch.ones(length, dtype=torch.bool)
    keep[pos] = False
    assert torch.equal(k[:, :, keep], caches[0][:, :, keep]) and torch.equal(v[:, :, keep], caches[1][:, :, keep])
    assert not torch.equal(k[:, :, pos], caches[0][:, :, pos])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rows, heads, head_dim, hidden, length, pos", SHAPES[2:], ids=IDS[2:])
def test_block_other_dtypes_equal_reference_bitwise(rows, heads, head_dim, hidden, length, pos, dtype):
    x, weights, caches, rope = _block_inputs(rows, heads, head_dim, hidden, length, dtype)
    out, k, v = _run(ops.decode_block, x, weights, caches, rope, pos)
    want, k_ref, v_ref = _run(ref.decode_block, x, weights, caches, rope, pos)
    assert out.dtype == dtype and torch.equal(out, want) and torch.equal(k, k_ref) and torch.equal(v, v_ref)


def test_block_is_one_layer_of_the_full_attention():
    """Feeding positions 0..S-1 one by one gives the causal full-sequence block (float64, to rounding)."""
    rows, heads, head_dim, hidden, length = 3, 2, 8, 24, 7
    x, weights, caches, rope = _block_inputs(rows, heads, head_dim, hidden, length, torch.float64, seed=3)
    xs = torch.randn(rows, length, heads * head_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    k, v = (torch.zeros_like(c) for c in caches)
    steps = torch.stack(
        [ops.decode_block(xs[:, t], *weights, k, v, rope, torch.tensor(t), 1e-5) for t in range(length)], 1
    )
    # the same block over the whole sequence at once, causal attention
    g1, wqkv, wo, g2, w1, w3, w2 = weights
    qkv = (ref.rms(xs, g1, 1e-5) @ wqkv.t()).view(rows, length, 3, heads, head_dim)
    q, kk = (apply_rope(qkv[:, :, i], rope).transpose(1, 2) for i in (0, 1))  # (R, H, S, D)
    att = torch.nn.functional.scaled_dot_product_attention(q, kk, qkv[:, :, 2].transpose(1, 2), is_causal=True)
    h = xs + att.transpose(1, 2).reshape(rows, length, -1) @ wo.t()
    hn = ref.rms(h, g2, 1e-5)
    full = h + (torch.nn.functional.silu(hn @ w1.t()) * (hn @ w3.t())) @ w2.t()
    torch.testing.assert_close(steps, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k, kk, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", [None, 1.0, 0.3, 4.0], ids=lambda c: f"cfg{c}")
@pytest.mark.parametrize("rows, dim, vocab", [(16, 256, 4096), (16, 256, 64), (2, 20, 37), (6, 8, 24)], ids=str)
def test_logits_match_reference(rows, dim, vocab, cfg):
    g = torch.Generator().manual_seed(1)
    z, head = torch.randn(rows, dim, generator=g), torch.randn(vocab, dim, generator=g) * dim**-0.5
    norm = 1 + 0.2 * torch.randn(dim, generator=g)
    out = ops.decode_logits(z, norm, head, 1e-5, cfg)
    want = ref.decode_logits(z, norm, head, 1e-5, cfg)
    assert out.shape == (rows if cfg is None else rows // 2, vocab)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-5)
    if cfg == 1.0:  # weight 1: the conditional rows alone
        torch.testing.assert_close(out, ref.rms(z[: rows // 2], norm, 1e-5) @ head.t(), rtol=1e-5, atol=2e-5)
    for dtype in (torch.float64, torch.bfloat16):
        zd, nd, hd = z.to(dtype), norm.to(dtype), head.to(dtype)
        assert torch.equal(ops.decode_logits(zd, nd, hd, 1e-5, cfg), ref.decode_logits(zd, nd, hd, 1e-5, cfg))


_ISA_SCRIPT = """
import torch
from magvit2 import ops
from magvit2.ops.reference import ar_decode as ref
from tests.ops.test_ar_decode import SHAPES, _block_inputs, _run
for rows, heads, head_dim, hidden, length, pos in SHAPES:
    x, weights, caches, rope = _block_inputs(rows, heads, head_dim, hidden, length, torch.float32)
    out, k, v = _run(ops.decode_block, x, weights, caches, rope, pos)
    want, k_ref, v_ref = _run(ref.decode_block, x, weights, caches, rope, pos)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(k, k_ref, rtol=1e-5, atol=1e-5)
    z, norm, head = torch.randn(rows * 2, 20), torch.rand(20) + 0.5, torch.randn(37, 20)
    torch.testing.assert_close(
        ops.decode_logits(z, norm, head, 1e-5, 3.0), ref.decode_logits(z, norm, head, 1e-5, 3.0), rtol=1e-5, atol=2e-5
    )
    if {exact}:  # the ATen calls: the reference bit for bit
        assert torch.equal(out, want) and torch.equal(k, k_ref)
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_every_vector_path_matches_reference(isa):
    """MAGVIT2_CPU_ISA caps the kernel's choice: the AVX2 tile and the ATen calls run here too (a fresh process, as
    the choice is made once)."""
    env = dict(os.environ, MAGVIT2_CPU_ISA=isa)
    script = _ISA_SCRIPT.format(exact=isa == "base")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_unknown_isa_is_refused():
    env = dict(os.environ, MAGVIT2_CPU_ISA="sse9")
    script = _ISA_SCRIPT.format(exact=False)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "MAGVIT2_CPU_ISA must be avx512, avx2 or base, got 'sse9'" in run.stderr


def test_non_contiguous_inputs():
    x, weights, caches, rope = _block_inputs(4, 2, 8, 24, 5, torch.float32)
    strided = [torch.empty(w.shape[::-1]).t().copy_(w) if w.dim() == 2 else w[None].expand(2, -1)[1] for w in weights]
    assert not strided[1].is_contiguous()
    x_t = torch.empty(x.shape[1], x.shape[0]).t().copy_(x)
    out, _, _ = _run(ops.decode_block, x_t, strided, caches, rope, 3)
    want, _, _ = _run(ref.decode_block, x, weights, caches, rope, 3)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-5)


def test_opcheck():
    x, weights, (k, v), rope = _block_inputs(4, 2, 8, 16, 5, torch.float32)
    torch.library.opcheck(torch.ops.magvit2.decode_block.default, (x, *weights, k, v, rope, torch.tensor(2), 1e-5))
    z, norm, head = torch.randn(4, 16), torch.rand(16), torch.randn(32, 16)
    torch.library.opcheck(torch.ops.magvit2.decode_logits.default, (z, norm, head, 1e-5, 2.0))
    torch.library.opcheck(torch.ops.magvit2.decode_logits.default, (z, norm, head, 1e-5, None))


def _bad_block(**change):
    x, weights, (k, v), rope = _block_inputs(2, 2, 4, 8, 5, torch.float32)
    names = ("attention_norm", "wqkv", "wo", "ffn_norm", "w1", "w3", "w2")
    args = dict(x=x, **dict(zip(names, weights, strict=True)), k_cache=k, v_cache=v, rope=rope, pos=torch.tensor(1))
    args["eps"] = 1e-5
    args.update(change)
    return args


BAD = [
    ("x 1-d", dict(x=torch.randn(8)), r"x must be a floating \(rows, dim\) tensor"),
    (
        "cache rows",
        dict(k_cache=torch.zeros(3, 2, 5, 4)),
        r"k_cache must be \(rows, heads, length, head_dim\) with rows = 2",
    ),
    ("v cache", dict(v_cache=torch.zeros(2, 2, 6, 4)), r"v_cache must match k_cache"),
    (
        "cache dtype",
        dict(
            k_cache=torch.zeros(2, 2, 5, 4, dtype=torch.float64), v_cache=torch.zeros(2, 2, 5, 4, dtype=torch.float64)
        ),
        r"k_cache and v_cache must be contiguous .*tensors, got .*(Double|float64)",
    ),
    (
        "cache strides",
        dict(k_cache=torch.zeros(2, 5, 2, 4).transpose(1, 2), v_cache=torch.zeros(2, 5, 2, 4).transpose(1, 2)),
        r"k_cache and v_cache must be contiguous .*\(not contiguous\)",
    ),
    ("wqkv (in, out)", dict(wqkv=torch.randn(8, 24)), r"wqkv must be \(24, 8\) \(as the block stores it"),
    ("w3 hidden", dict(w3=torch.randn(10, 8)), r"w3 must be \(8, 8\)"),
    ("w2 hidden", dict(w2=torch.randn(8, 10)), r"w2 must be \(8, 8\)"),
    ("norm", dict(ffn_norm=torch.ones(7)), r"ffn_norm must be \(8,?\)"),
    ("dtype", dict(wo=torch.randn(8, 8, dtype=torch.float64)), r"wo must be \(8, 8\) .* got .*(Double|float64)"),
    (
        "rope dtype",
        dict(rope=torch.rand(5, 2, 2, dtype=torch.float64)),
        r"rope must be a float32 \(positions, head_dim / 2, 2\)",
    ),
    ("pos range", dict(pos=torch.tensor(5)), r"pos must be in \[0, 5\)"),
    ("pos float", dict(pos=torch.tensor(1.0)), r"pos must be one integer"),
    ("eps", dict(eps=float("nan")), r"eps must be a finite number >= 0"),
]


@pytest.mark.parametrize("change, message", [(c, m) for _, c, m in BAD], ids=[n for n, _, _ in BAD])
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_block_errors_name_the_argument(change, message, impl):
    fn = ops.decode_block if impl == "kernel" else ref.decode_block
    with pytest.raises(ValueError, match="decode_block: .*" + message):
        fn(**_bad_block(**change))


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_logits_errors_name_the_argument(impl):
    fn = ops.decode_logits if impl == "kernel" else ref.decode_logits
    with pytest.raises(ValueError, match=r"decode_logits: head must be \(vocab, dim\) with dim = 8"):
        fn(torch.randn(4, 8), torch.ones(8), torch.randn(8, 32), 1e-5, None)
    with pytest.raises(ValueError, match=r"decode_logits: norm must be \(8,?\)"):
        fn(torch.randn(4, 8), torch.ones(9), torch.randn(32, 8), 1e-5, None)
    with pytest.raises(ValueError, match=r"decode_logits: with cfg_scale, z must hold \[cond; uncond\] rows"):
        fn(torch.randn(3, 8), torch.ones(8), torch.randn(32, 8), 1e-5, 2.0)
