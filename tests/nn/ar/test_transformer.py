"""The factorized AR transformer: official sizes and keys, 2D RoPE conventions, causality, teacher forcing, loss."""

import math

import pytest
import torch

from magvit2.data.tokens import pack_groups
from magvit2.nn.ar.generation import DecodeStep, generate
from magvit2.nn.ar.transformer import AR_PRESETS, ARConfig, ARTransformer, apply_rope, rope_table_2d


def _meta(name):
    with torch.device("meta"):
        return ARTransformer.from_preset(name)


@pytest.mark.parametrize(
    "name, params, tensors, dim, hidden",
    [
        ("open-magvit2-ar-B", 343_570_432, 188, 1024, 2816),
        ("open-magvit2-ar-L", 804_362_240, 279, 1280, 3584),
        ("open-magvit2-ar-XL", 1_486_679_040, 370, 1536, 4096),
    ],
)
def test_official_sizes_and_key_layout(name, params, tensors, dim, hidden):
    model = _meta(name)
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(sd) == tensors
    c = model.config
    expected = {
        "pre_emb.weight": (64, dim),
        "post_emb.weight": (4096, dim),
        "class_emb.embedding_table.weight": (1001, dim),
        "norm.weight": (dim,),
        "head.0.weight": (64, dim),
        "head.1.weight": (4096, dim),
    }
    for stack, n in (("spatial_blocks", c.spatial_n_layer), ("factorized_blocks", c.factorized_n_layer)):
        for i in range(n):
            expected |= {
                f"{stack}.{i}.attention.wqkv.weight": (3 * dim, dim),
                f"{stack}.{i}.attention.wo.weight": (dim, dim),
                f"{stack}.{i}.feed_forward.w1.weight": (hidden, dim),
                f"{stack}.{i}.feed_forward.w3.weight": (hidden, dim),
                f"{stack}.{i}.feed_forward.w2.weight": (dim, hidden),
                f"{stack}.{i}.attention_norm.weight": (dim,),
                f"{stack}.{i}.ffn_norm.weight": (dim,),
            }
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_rope_table_conventions():
    table = rope_table_2d(4, 16)  # head_dim 16: 4 pairs for rows, 4 for columns
    assert table.shape == (17, 8, 2)
    assert torch.all(table[0] == 0)  # class position: q and k zeroed
    torch.testing.assert_close(table[1], torch.stack([torch.ones(8), torch.zeros(8)], dim=-1))  # cell (0, 0)
    freqs = 1.0 / (10000 ** (torch.arange(0, 8, 2).double() / 8))
    r, col = 2, 3
    row = table[1 + r * 4 + col]
    torch.testing.assert_close(row[:4, 0], (r * freqs).cos().float())  # first half: the row index
    torch.testing.assert_close(row[4:, 1], (col * freqs).sin().float())  # second half: the column index


def test_apply_rope_rotates_interleaved_pairs():
    x = torch.tensor([[[[1.0, 0.0, 0.0, 2.0]]]])  # (B=1, T=1, H=1, D=4)
    angle = torch.tensor([math.pi / 2, math.pi])
    table = torch.stack([angle.cos(), angle.sin()], dim=-1)[None]  # (1, 2, 2)
    out = apply_rope(x, table)
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 1.0, 0.0, -2.0]]]]), atol=1e-6, rtol=0)


def test_zero_heads_give_uniform_logits_and_loss_18_ln2():
    torch.manual_seed(0)
    model = ARTransformer.from_preset("tiny").eval()
    pre, post = torch.randint(0, 64, (2, 64)), torch.randint(0, 4096, (2, 64))
    logits = model(pre, post, torch.tensor([1, 10]))
    assert logits.pre.shape == (2, 64, 64) and logits.post.shape == (2, 64, 4096)
    assert torch.all(logits.pre == 0) and torch.all(logits.post == 0)
    assert model.loss(pre, post, torch.tensor([1, 10])).item() == pytest.approx(18 * math.log(2), rel=1e-6)


def _trained_tiny():
    torch.manual_seed(0)
    model = ARTransformer.from_preset("tiny")
    for h in model.head:
        torch.nn.init.normal_(h.weight, 0, 0.02)  # non-zero heads so logits depend on the inputs
    return model.eval()


def test_causality_and_teacher_forcing():
    model = _trained_tiny()
    pre, post, cls = torch.randint(0, 64, (1, 64)), torch.randint(0, 4096, (1, 64)), torch.tensor([2])
    base = model(pre, post, cls)
    j = 20
    post2 = post.clone()
    post2[0, j] = (post[0, j] + 1) % 4096
    changed = model(pre, post2, cls)
    torch.testing.assert_close(changed.pre[:, : j + 1], base.pre[:, : j + 1])  # outputs <= j never see token j
    torch.testing.assert_close(changed.post[:, : j + 1], base.post[:, : j + 1])
    assert not torch.allclose(changed.pre[:, j + 1], base.pre[:, j + 1])  # output j+1 does
    pre2 = pre.clone()
    pre2[0, j] = (pre[0, j] + 1) % 64
    changed = model(pre2, post, cls)
    torch.testing.assert_close(changed.pre[:, : j + 1], base.pre[:, : j + 1])  # pre_j is not seen by its own pre head
    assert not torch.allclose(changed.post[:, j], base.post[:, j])  # but conditions the post head at j
    other = model(pre, post, torch.tensor([5]))
    assert not torch.allclose(other.pre[:, 0], base.pre[:, 0])  # the first token depends on the class


def test_prefix_gives_the_same_logits():
    model = _trained_tiny()
    pre, post, cls = torch.randint(0, 64, (2, 64)), torch.randint(0, 4096, (2, 64)), torch.tensor([0, 10])
    full, prefix = model(pre, post, cls), model(pre[:, :17], post[:, :17], cls)
    torch.testing.assert_close(prefix.pre, full.pre[:, :17], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prefix.post, full.post[:, :17], atol=1e-5, rtol=1e-5)


def test_label_dropout_uses_the_null_class_in_training_only():
    model = ARTransformer(ARConfig(**{**AR_PRESETS["tiny"].to_dict(), "class_dropout_prob": 0.5}))
    labels = torch.zeros(4000, dtype=torch.long)
    table = model.class_emb.embedding_table.weight
    torch.manual_seed(0)
    emb = model.class_emb.train()(labels)[:, 0]
    dropped = (emb == table[model.config.class_num]).all(dim=1).float().mean().item()
    assert 0.45 < dropped < 0.55
    assert torch.equal(model.class_emb.eval()(labels)[:, 0], table[labels])


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = ARTransformer.from_preset("tiny", token_drop=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    pre, post, cls = torch.randint(0, 64, (4, 64)), torch.randint(0, 4096, (4, 64)), torch.arange(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(10):
        loss = model.loss(pre, post, cls)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pre": torch.zeros(1, 4)}, "pre must be an int64"),
        ({"pre": torch.full((1, 4), 64)}, r"pre ids must lie in \[0, 64\)"),
        ({"post": torch.full((1, 4), -1)}, r"post ids must lie in \[0, 4096\)"),
        ({"pre": torch.zeros(1, 65, dtype=torch.long), "post": torch.zeros(1, 65, dtype=torch.long)}, "65 tokens"),
        ({"cls": torch.tensor([11])}, r"class ids must lie in \[0, 10\]"),
        ({"cls": torch.tensor([1, 2])}, r"cls must be \(B,\)"),
        ({"post": torch.zeros(1, 3, dtype=torch.long)}, "differ in shape"),
    ],
)
def test_bad_input_names_the_argument(kwargs, message):
    model = ARTransformer.from_preset("tiny")
    args = {
        "pre": torch.zeros(1, 4, dtype=torch.long),
        "post": torch.zeros(1, 4, dtype=torch.long),
        "cls": torch.tensor([1]),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        model(args["pre"], args["post"], args["cls"])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("n_head", 5, "head size"),
        ("block_size", 200, "square"),
        ("n_kv_head", 2, "n_kv_head"),
        ("drop_path_rate", 0.1, "drop_path_rate"),
        ("token_drop", 1.0, "token_drop"),
    ],
)
def test_config_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        ARConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown field"):
        ARConfig.from_dict({"dimm": 3})
    with pytest.raises(ValueError, match="unknown AR preset"):
        ARTransformer.from_preset("huge")


def _random_heads(seed=0, **overrides):
    torch.manual_seed(seed)
    model = ARTransformer.from_preset("tiny", **overrides)
    for h in model.head:
        torch.nn.init.normal_(h.weight, 0, 0.5)
    return model.double().eval()


def test_greedy_generation_equals_teacher_forced_argmax():
    model = _random_heads()
    classes = torch.tensor([0, 3, 9])
    out = generate(model, classes, top_k=1)
    assert out.pre.shape == out.post.shape == (3, 64)
    logits = model(out.pre, out.post, classes)  # full causal pass over the generated tokens
    assert torch.equal(logits.pre.float().argmax(-1), out.pre)
    assert torch.equal(logits.post.float().argmax(-1), out.post)
    assert torch.equal(pack_groups((out.pre, out.post), (6, 12)), out.pre + 64 * out.post)


def test_guided_greedy_generation_equals_combined_logits():
    model = _random_heads(1)
    classes = torch.tensor([2, 5])
    out = generate(model, classes, cfg=(1.9, 2.0), top_k=1)
    cond = model(out.pre, out.post, classes)
    uncond = model(out.pre, out.post, torch.full_like(classes, 10))
    for field, scale in (("pre", 1.9), ("post", 2.0)):
        c, u = getattr(cond, field).float(), getattr(uncond, field).float()
        combined = u + (c - u) * torch.tensor(scale, dtype=torch.float32)
        assert torch.equal(combined.argmax(-1), getattr(out, field)), field


def test_sampled_generation_is_reproducible_and_depends_on_the_seed():
    model = _random_heads(2)
    classes = torch.tensor([1, 1, 4])
    settings = dict(cfg=(1.5, 1.5), temperature=(1.1, 1.0), top_k=(0, 100), top_p=(0.96, 0.96))
    a = generate(model, classes, seed=3, **settings)
    b = generate(model, classes, seed=3, **settings)
    c = generate(model, classes, seed=4, **settings)
    assert torch.equal(a.pre, b.pre) and torch.equal(a.post, b.post)
    assert not torch.equal(a.post, c.post)
    assert not torch.equal(a.post[0], a.post[1])  # same class, different rows of the stream
    assert bool((a.pre < 64).all() and (a.post < 4096).all() and (a.pre >= 0).all())
    assert model.training is False


def test_generate_errors():
    model = ARTransformer.from_preset("tiny")
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 10\)"):
        generate(model, torch.tensor([10]))
    with pytest.raises(ValueError, match="classes must be a"):
        generate(model, torch.tensor([[1]]))
    with pytest.raises(ValueError, match="top_k must be"):
        generate(model, torch.tensor([1]), top_k=(1.5, 2))
    with pytest.raises(ValueError, match="num_tokens"):
        generate(model, torch.tensor([1]), num_tokens=65)


@pytest.mark.parametrize("cfg", [(1.0, 1.0), (1.9, 2.0)], ids=["nocfg", "cfg"])
def test_kv_cache_logits_equal_the_full_forward_in_float64(cfg):
    model = _random_heads(3)
    classes = torch.tensor([4, 7])
    out = generate(model, classes, cfg=cfg, top_p=(0.9, 0.9), seed=5, return_logits=True)
    full = model(out.pre, out.post, classes)  # teacher forcing on the generated sequence
    assert out.logits_pre.dtype == torch.float64 and out.logits_pre.shape == full.pre.shape
    torch.testing.assert_close(out.logits_pre, full.pre, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.logits_post, full.post, rtol=0, atol=1e-10)


def test_generate_with_a_compiled_static_step_matches_eager():
    """The static decode step compiles as one graph per half (fullgraph, no recompilation across positions) and
    samples the same tokens; backend "eager" keeps the test to Dynamo's capture (inductor takes tens of seconds)."""
    import torch._dynamo.testing

    model = _random_heads(4).float()
    classes = torch.tensor([2, 6])
    settings = dict(cfg=(1.9, 2.0), top_p=(0.9, 0.9), seed=7, num_tokens=5, return_logits=True)
    eager = generate(model, classes, **settings)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("eager")
    compiled = generate(model, classes, compile=counter, **settings)
    assert counter.frame_count == 2  # pre_logits and post_logits, each captured once for all 5 positions
    assert torch.equal(compiled.pre, eager.pre) and torch.equal(compiled.post, eager.post)
    torch.testing.assert_close(compiled.logits_pre, eager.logits_pre, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled.logits_post, eager.logits_post, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_guided_step_logits_equal_the_combined_full_forward_in_float64():
    """With guidance the step combines before the (linear) head: same logits as combining the full forward's."""
    model = _random_heads(5)
    classes, null = torch.tensor([3, 8]), torch.tensor([10, 10])
    scales, steps = (1.9, 2.0), 6
    out = generate(model, classes, cfg=scales, top_p=(0.9, 0.9), seed=2, num_tokens=steps)
    cond, uncond = model(out.pre, out.post, classes), model(out.pre, out.post, null)
    step = DecodeStep(model, rows=4, length=steps, guidance=scales)
    x = model.class_emb.embedding_table(torch.cat([classes, null]))
    for n in range(steps):
        pre, post = out.pre[:, n].repeat(2), out.post[:, n].repeat(2)
        got = (step.pre_logits(x, step.positions[n]), step.post_logits(pre))
        for field, logits, s in zip(("pre", "post"), got, scales, strict=True):
            c, u = getattr(cond, field)[:, n], getattr(uncond, field)[:, n]
            torch.testing.assert_close(logits, u + s * (c - u), rtol=0, atol=1e-10)
        x = model.pre_emb(pre) + model.post_emb(post)
