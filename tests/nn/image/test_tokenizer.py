"""Tokenizer: the official key names, shapes and counts for both Large presets, numerics against an independent
functional re-implementation of the official modules, token grids, and clear errors on bad input."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magvit2 import Tokenizer, TokenizerConfig, ops

LARGE = {
    "open-magvit2-256-L": dict(
        count=339,
        params=(49.75, 65.38),
        shapes={
            "encoder.conv_in.weight": (128, 3, 3, 3),
            "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
            "encoder.down.4.block.0.nin_shortcut.weight": (512, 256, 1, 1),
            "encoder.down.3.downsample.weight": (256, 256, 3, 3),
            "encoder.down.3.downsample.bias": (256,),
            "encoder.mid_block.3.conv2.weight": (512, 512, 3, 3),
            "encoder.norm_out.weight": (512,),
            "encoder.conv_out.weight": (18, 512, 1, 1),
            "encoder.conv_out.bias": (18,),
            "decoder.conv_in.weight": (512, 18, 3, 3),
            "decoder.conv_in.bias": (512,),
            "decoder.up.4.upsample.conv1.weight": (2048, 512, 3, 3),
            "decoder.up.3.upsample.conv1.weight": (1024, 256, 3, 3),
            "decoder.up.2.upsample.conv1.weight": (1024, 256, 3, 3),
            "decoder.up.1.upsample.conv1.weight": (512, 128, 3, 3),
            "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
            "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
            "decoder.adaptive.0.gamma.weight": (128, 18),
            "decoder.adaptive.1.beta.weight": (256, 18),
            "decoder.adaptive.2.gamma.bias": (256,),
            "decoder.adaptive.3.gamma.weight": (512, 18),
            "decoder.adaptive.4.beta.bias": (512,),
            "decoder.norm_out.weight": (128,),
            "decoder.conv_out.weight": (3, 128, 3, 3),
            "decoder.conv_out.bias": (3,),
        },
        absent=[
            "encoder.conv_in.bias",
            "encoder.down.4.downsample.weight",
            "decoder.up.0.upsample.conv1.weight",
            "encoder.down.0.block.0.conv1.bias",
        ],  # fmt: skip
    ),
    "open-magvit2-128-L": dict(
        count=283,
        params=(48.42, 63.60),
        shapes={
            "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
            "encoder.down.3.block.0.nin_shortcut.weight": (512, 256, 1, 1),
            "encoder.down.2.downsample.weight": (256, 256, 3, 3),
            "decoder.up.3.upsample.conv1.weight": (2048, 512, 3, 3),
            "decoder.up.2.upsample.conv1.weight": (1024, 256, 3, 3),
            "decoder.up.1.upsample.conv1.weight": (1024, 256, 3, 3),
            "decoder.adaptive.0.gamma.weight": (256, 18),
            "decoder.adaptive.1.gamma.weight": (256, 18),
            "decoder.adaptive.2.gamma.weight": (512, 18),
            "decoder.adaptive.3.gamma.weight": (512, 18),
            "decoder.up.0.block.0.conv1.weight": (128, 256, 3, 3),
        },
        absent=[
            "encoder.down.3.downsample.weight",
            "decoder.up.4.block.0.conv1.weight",
            "decoder.adaptive.4.gamma.weight",
        ],
    ),
}


@pytest.mark.parametrize("preset", list(LARGE))
def test_official_key_names_shapes_and_counts(preset):
    want = LARGE[preset]
    with torch.device("meta"):
        model = Tokenizer.from_preset(preset)
    sd = model.state_dict()
    assert len(sd) == want["count"]
    assert all(k.startswith(("encoder.", "decoder.")) for k in sd)
    enc = sum(p.numel() for p in model.encoder.parameters()) / 1e6
    dec = sum(p.numel() for p in model.decoder.parameters()) / 1e6
    assert (round(enc, 2), round(dec, 2)) == want["params"]
    assert {k: tuple(sd[k].shape) for k in want["shapes"]} == want["shapes"]
    assert not [k for k in want["absent"] if k in sd]
    assert len(list(model.buffers())) == 0


# --- an independent functional re-implementation from the fact sheet (reference/open-magvit2.md §2) ----------------


def swish(x):
    return x * torch.sigmoid(x)


def gn(sd, p, x):
    return F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)


def res(sd, p, x):
    h = F.conv2d(swish(gn(sd, p + "norm1", x)), sd[p + "conv1.weight"], padding=1)
    h = F.conv2d(swish(gn(sd, p + "norm2", h)), sd[p + "conv2.weight"], padding=1)
    return h + (F.conv2d(x, sd[p + "nin_shortcut.weight"]) if p + "nin_shortcut.weight" in sd else x)


def dcr(x):  # out[k, 2h + r1, 2w + r2] = in[(r1 * 2 + r2) * C + k, h, w]
    b, c, h, w = x.shape
    out = x.new_empty(b, c // 4, 2 * h, 2 * w)
    for r1 in range(2):
        for r2 in range(2):
            out[:, :, r1::2, r2::2] = x[:, (r1 * 2 + r2) * (c // 4) : (r1 * 2 + r2 + 1) * (c // 4)]
    return out


def ref_encoder(sd, cfg, x):
    x = F.conv2d(x, sd["encoder.conv_in.weight"], padding=1)
    for i in range(len(cfg.ch_mult)):
        for j in range(cfg.num_res_blocks):
            x = res(sd, f"encoder.down.{i}.block.{j}.", x)
        if i < len(cfg.ch_mult) - 1:
            x = F.conv2d(x, sd[f"encoder.down.{i}.downsample.weight"], sd[f"encoder.down.{i}.downsample.bias"], 2, 1)
    for j in range(cfg.num_res_blocks):
        x = res(sd, f"encoder.mid_block.{j}.", x)
    return F.conv2d(swish(gn(sd, "encoder.norm_out", x)), sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"])


def ref_decoder(sd, cfg, z):
    flat = z.flatten(2)
    std, mean = (flat.var(-1, unbiased=True) + 1e-6).sqrt(), flat.mean(-1)
    x = F.conv2d(z, sd["decoder.conv_in.weight"], sd["decoder.conv_in.bias"], padding=1)
    for j in range(cfg.num_res_blocks):
        x = res(sd, f"decoder.mid_block.{j}.", x)
    for i in reversed(range(len(cfg.ch_mult))):
        p = f"decoder.adaptive.{i}."
        scale = F.linear(std, sd[p + "gamma.weight"], sd[p + "gamma.bias"])[..., None, None]
        shift = F.linear(mean, sd[p + "beta.weight"], sd[p + "beta.bias"])[..., None, None]
        x = scale * F.group_norm(x, 32, eps=1e-6) + shift
        for j in range(cfg.num_res_blocks):
            x = res(sd, f"decoder.up.{i}.block.{j}.", x)
        if i > 0:
            p = f"decoder.up.{i}.upsample.conv1."
            x = dcr(F.conv2d(x, sd[p + "weight"], sd[p + "bias"], padding=1))
    x = swish(gn(sd, "decoder.norm_out", x))
    return F.conv2d(x, sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"], padding=1)


def perturbed(config, seed=0):
    torch.manual_seed(seed)
    model = Tokenizer(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():  # move the norms' affine and every bias away from their init
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize(
    "config",
    [TokenizerConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1), TokenizerConfig(ch=32, ch_mult=(1, 2, 2, 4))],
    ids=["tiny-f4", "ch32-f8-2blocks"],
)
def test_matches_functional_reference(config):
    model = perturbed(config)
    sd = model.state_dict()
    x = torch.rand(2, 3, 32, 24, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        z = model.encoder(x)
        torch.testing.assert_close(z, ref_encoder(sd, config, x))
        quantized, indices = model.encode(x)
        codes = torch.where(z > 0, 1.0, -1.0).double()
        assert torch.equal(quantized, codes)
        bits = (z > 0).long() * (2 ** torch.arange(18)).view(1, 18, 1, 1)
        assert torch.equal(indices, bits.sum(1))
        torch.testing.assert_close(model.decode(quantized), ref_decoder(sd, config, codes))


def test_encode_decode_paths_agree():
    model = Tokenizer.from_preset("tiny").eval()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        quantized, indices = model.encode(x)
        assert quantized.shape == (2, 18, 8, 12) and indices.shape == (2, 8, 12)
        rec = model.decode(quantized)
        assert rec.shape == x.shape
        assert torch.equal(model.decode_indices(indices), rec)
        out = model(x)
        assert torch.equal(out.reconstruction, rec) and torch.equal(out.lfq.indices, indices)


def test_factorized_tokenizer_indices():
    model = Tokenizer.from_preset("tiny", factorized_bits=(6, 12)).eval()
    full = Tokenizer.from_preset("tiny").eval()
    full.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        _, (pre, post) = model.encode(x)
        assert torch.equal(pre + 64 * post, full.encode(x).indices)
        assert torch.equal(model.decode_indices((pre, post)), full.decode_indices(pre + 64 * post))


def test_128_model_on_256_input_gives_32x32_tokens():
    with torch.device("meta"):
        model = Tokenizer.from_preset("open-magvit2-128-L").eval()
        quantized, indices = model.encode(torch.empty(1, 3, 256, 256))
        assert indices.shape == (1, 32, 32) and model.downsample_factor == 8
        assert model.decode(quantized).shape == (1, 3, 256, 256)
        assert Tokenizer.from_preset("open-magvit2-256-L").encode(torch.empty(1, 3, 256, 256)).indices.shape == (
            1, 16, 16,
        )  # fmt: skip


def test_channels_last_matches():
    model = Tokenizer.from_preset("tiny").eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        want = model(x).reconstruction
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(x.contiguous(memory_format=torch.channels_last)).reconstruction
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_training_reduces_reconstruction_error(astronaut):
    """The straight-through estimator and the LFQ loss let a tiny tokenizer fit real image patches."""
    torch.manual_seed(0)
    img = torch.from_numpy(np.ascontiguousarray(astronaut[::8, ::8])).permute(2, 0, 1).float() / 127.5 - 1  # 64x64
    x = torch.stack([img[:, :32, :32], img[:, 32:, :32], img[:, :32, 32:], img[:, 32:, 32:]])
    model = Tokenizer.from_preset("tiny").train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        out = model(x)
        l1 = (out.reconstruction - x).abs().mean()
        opt.zero_grad()
        (l1 + out.lfq.loss).backward()
        opt.step()
        losses.append(l1.item())
    assert losses[-1] < 0.6 * losses[0], losses[::10]


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8, shipped with scikit-image


def test_bad_images_raise_before_any_kernel():
    model = Tokenizer.from_preset("tiny").eval()
    with pytest.raises(ValueError, match="expected 3 input channels"):
        model.encode(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="30x32 is not a positive multiple of the downsampling factor 4"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="expected float images"):
        model.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="expected float images"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.encode(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.warns(UserWarning, match=r"outside the expected \[-1, 1\]"):
        model.encode(torch.full((1, 3, 8, 8), 255.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.encode(torch.rand(1, 3, 8, 8) * 2 - 1)  # in range: no warning


def test_bad_latents_and_indices_raise():
    model = Tokenizer.from_preset("tiny").eval()
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 262144\)"):
        model.decode_indices(torch.full((1, 4, 4), 2**18))
    with pytest.raises(ValueError, match=r"\[-3, -3\]"):
        model.decode_indices(torch.full((1, 4, 4), -3))
    with pytest.raises(ValueError, match=r"expected \(B, h, w\) index tensors"):
        model.decode_indices(torch.zeros(16, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        model.decode_indices(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        model.decode(torch.ones(1, 18, 1, 1))
    with pytest.raises(ValueError, match="expected 18 latent channels"):
        model.decode(torch.ones(1, 16, 4, 4))


def test_config_and_presets():
    cfg = TokenizerConfig(ch=32, ch_mult=[1, 2], factorized_bits=[6, 12])
    assert cfg.ch_mult == (1, 2) and cfg.factorized_bits == (6, 12) and cfg.downsample_factor == 2
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    assert dataclasses.asdict(TokenizerConfig()) == dataclasses.asdict(TokenizerConfig(resolution=128))
    with pytest.raises(ValueError, match="unknown preset"):
        Tokenizer.from_preset("open-magvit2-512-XL")
    with pytest.raises(ValueError, match="divisible by 32"):
        TokenizerConfig(ch=48)
    with pytest.raises(ValueError, match="codebook_size"):
        TokenizerConfig(codebook_size=2**16)
    with pytest.raises(ValueError, match="unknown field"):
        TokenizerConfig.from_dict({"ch": 32, "dropout": 0.1})
    tiny = Tokenizer.from_preset("tiny", entropy_weight=0.0)
    assert tiny.quantizer.entropy_weight == 0.0 and tiny.config.ch == 32


def test_tiny_tokenizer_with_a_2_24_codebook_trains():
    """A 2^24 codebook (K = 24: the tiled entropy, never the 2^24 average) trains end to end: finite gradients in
    every parameter, the entropy terms equal the float64 values on the same tokens, int64 indices that decode back
    to the quantized latents, and the steps lower the loss."""
    torch.manual_seed(0)
    model = Tokenizer.from_preset("tiny", z_channels=24, codebook_size=2**24).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(4):
        out = model(x)
        loss = (out.reconstruction - x).abs().mean() + out.lfq.loss
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    with torch.no_grad():
        latents = model.encoder(x)
        tokens = latents.permute(0, 2, 3, 1).reshape(-1, 24)  # (B h w, K)
        want = ops.lfq_entropy(tokens.double(), model.config.inv_temperature, model.config.log_eps)
        out = model(x)
    assert out.lfq.indices.dtype == torch.int64 and int(out.lfq.indices.max()) < 2**24
    torch.testing.assert_close(out.lfq.codebook_entropy.double(), want.codebook_entropy, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.lfq.per_sample_entropy.double(), want.per_sample_entropy, rtol=1e-5, atol=0)
    assert torch.equal(model.quantizer.indices_to_codes(out.lfq.indices), out.lfq.quantized)


def test_config_takes_codebooks_up_to_2_32():
    cfg = TokenizerConfig(ch=32, ch_mult=[1, 2], z_channels=32, codebook_size=2**32, factorized_bits=[16, 16])
    assert cfg.codebook_size == 2**32
    with pytest.raises(ValueError, match="z_channels"):
        TokenizerConfig(z_channels=33, codebook_size=2**33)
