"""decode_block / decode_logits: the C++ kernel against the plain-torch reference (float32 within rounding, other
dtypes bit for bit), cache writes, both weight layouts, tails of the matmul tiles, opcheck and argument errors."""

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

    weights = [
        rand(dim, 3 * dim, scale=dim**-0.5),
        rand(dim, dim, scale=dim**-0.5),
        rand(dim, 2 * hidden, scale=dim**-0.5),
        rand(hidden, dim, scale=hidden**-0.5),
    ]
    caches = [rand(rows, heads, length, head_dim), rand(rows, heads, length, head_dim)]
    rope = torch.rand(length, head_dim // 2, 2, generator=g) * 2 - 1
    return rand(rows, dim), weights, caches, rope


# (rows, heads, head_dim, hidden, length, pos): 8 + 8 rows of the benchmark model; tails of the 6-row tiles (1, 5,
# 7) and of the 16-column panels (dim 20 -> 60/20-column matmuls, hidden 37 -> 74 columns: 16-, 8- and 1-column
# tails); pos at both ends of the cache
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


@pytest.mark.parametrize("panels", [False, True], ids=["in-out", "panels"])
@pytest.mark.parametrize("rows, heads, head_dim, hidden, length, pos", SHAPES, ids=IDS)
def test_block_float32_matches_reference(rows, heads, head_dim, hidden, length, pos, panels):
    x, weights, caches, rope = _block_inputs(rows, heads, head_dim, hidden, length, torch.float32)
    ours_w = [ops.decode_panels(w) for w in weights] if panels else weights
    out, k, v = _run(ops.decode_block, x, ours_w, caches, rope, pos)
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
    wqkv, wo, w13, w2 = weights
    qkv = (ref.rms(xs, 1e-5) @ wqkv).view(rows, length, 3, heads, head_dim)
    q, kk = (apply_rope(qkv[:, :, i], rope).transpose(1, 2) for i in (0, 1))  # (R, H, S, D)
    att = torch.nn.functional.scaled_dot_product_attention(q, kk, qkv[:, :, 2].transpose(1, 2), is_causal=True)
    h = xs + att.transpose(1, 2).reshape(rows, length, -1) @ wo
    a, b = (ref.rms(h, 1e-5) @ w13).chunk(2, dim=-1)
    full = h + (torch.nn.functional.silu(a) * b) @ w2
    torch.testing.assert_close(steps, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k, kk, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("panels", [False, True], ids=["in-out", "panels"])
@pytest.mark.parametrize("cfg", [None, 1.0, 0.3, 4.0], ids=lambda c: f"cfg{c}")
@pytest.mark.parametrize("rows, dim, vocab", [(16, 256, 4096), (16, 256, 64), (2, 20, 37), (6, 8, 24)], ids=str)
def test_logits_match_reference(rows, dim, vocab, cfg, panels):
    g = torch.Generator().manual_seed(1)
    z, head = torch.randn(rows, dim, generator=g), torch.randn(dim, vocab, generator=g) * dim**-0.5
    out = ops.decode_logits(z, ops.decode_panels(head) if panels else head, 1e-5, cfg)
    want = ref.decode_logits(z, head, 1e-5, cfg)
    assert out.shape == (rows if cfg is None else rows // 2, vocab)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-5)
    if cfg == 1.0:  # weight 1: the conditional rows alone
        torch.testing.assert_close(out, ref.rms(z[: rows // 2], 1e-5) @ head, rtol=1e-5, atol=2e-5)
    for dtype in (torch.float64, torch.bfloat16):
        assert torch.equal(
            ops.decode_logits(z.to(dtype), head.to(dtype), 1e-5, cfg),
            ref.decode_logits(z.to(dtype), head.to(dtype), 1e-5, cfg),
        )


def test_panels_layout():
    w = torch.randn(5, 48)
    p = ops.decode_panels(w)
    assert p.shape == (3, 5, 16) and p.is_contiguous()
    assert torch.equal(p[1], w[:, 16:32]) and torch.equal(ref.dense(p), w)
    odd = torch.randn(5, 20)
    assert ops.decode_panels(odd) is odd


# (out of each part, in): whole panels per part; parts of 8 columns (the panels straddle them); an odd total
@pytest.mark.parametrize("outs, k", [((48, 48), 5), ((32,), 7), ((24, 24), 3), ((20,), 4)], ids=str)
@pytest.mark.parametrize("scaled", [True, False], ids=["scaled", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_decode_weight_equals_fold_transpose_panels(outs, k, scaled, dtype):
    """nn.Linear weights written once into the decode layout: bit for bit the fold, transpose and panel copy."""
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(o, k, generator=g).to(dtype).requires_grad_() for o in outs]
    scale = torch.rand(k, generator=g).to(dtype) + 0.5 if scaled else None
    with torch.no_grad():
        folded = torch.cat(parts) * scale if scaled else torch.cat(parts)
        dense = folded.t().contiguous()
    for panels in (False, True):
        got = ops.decode_weight(parts, scale, panels=panels)
        want = ops.decode_panels(dense) if panels else dense
        assert got.shape == want.shape and got.is_contiguous() and not got.requires_grad
        assert torch.equal(got, want)


def test_non_contiguous_inputs():
    x, weights, caches, rope = _block_inputs(4, 2, 8, 24, 5, torch.float32)
    strided = [torch.empty(w.shape[1], w.shape[0]).t().copy_(w) for w in weights]  # (in, out) views of (out, in)
    assert not strided[0].is_contiguous()
    x_t = torch.empty(x.shape[1], x.shape[0]).t().copy_(x)
    out, _, _ = _run(ops.decode_block, x_t, strided, caches, rope, 3)
    want, _, _ = _run(ref.decode_block, x, weights, caches, rope, 3)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-5)


def test_opcheck():
    x, weights, (k, v), rope = _block_inputs(4, 2, 8, 16, 5, torch.float32)
    torch.library.opcheck(torch.ops.magvit2.decode_block.default, (x, *weights, k, v, rope, torch.tensor(2), 1e-5))
    panels = [ops.decode_panels(w) for w in weights]
    torch.library.opcheck(torch.ops.magvit2.decode_block.default, (x, *panels, k, v, rope, torch.tensor(0), 1e-6))
    z, head = torch.randn(4, 16), torch.randn(16, 32)
    torch.library.opcheck(torch.ops.magvit2.decode_logits.default, (z, head, 1e-5, 2.0))
    torch.library.opcheck(torch.ops.magvit2.decode_logits.default, (z, ops.decode_panels(head), 1e-5, None))


def _bad_block(**change):
    x, (wqkv, wo, w13, w2), (k, v), rope = _block_inputs(2, 2, 4, 8, 5, torch.float32)
    args = dict(x=x, wqkv=wqkv, wo=wo, w13=w13, w2=w2, k_cache=k, v_cache=v, rope=rope, pos=torch.tensor(1), eps=1e-5)
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
    ("wqkv", dict(wqkv=torch.randn(8, 8)), r"wqkv must be \(in, out\) = \(8, 24\)"),
    ("w13 hidden", dict(w13=torch.randn(8, 10)), r"w13 must be \(in, out\) = \(8, 16\)"),
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
    with pytest.raises(ValueError, match=r"decode_logits: head must be \(dim, vocab\) with dim = 8"):
        fn(torch.randn(4, 8), torch.randn(6, 32), 1e-5, None)
    with pytest.raises(ValueError, match=r"decode_logits: with cfg_scale, z must hold \[cond; uncond\] rows"):
        fn(torch.randn(3, 8), torch.randn(8, 32), 1e-5, 2.0)


def test_panels_only_where_the_fused_kernel_streams_them():
    from magvit2.ops.ar_decode import prefers_panels

    fused = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")  # the x86 kernels' tiles
    assert prefers_panels(torch.device("cpu"), torch.float32) == fused
    assert not prefers_panels(torch.device("cpu"), torch.float64)  # ATen calls: (in, out) weights
    assert not prefers_panels(torch.device("meta"), torch.float32)
