"""The video tokenizer: the official video-128-L key layout and parameter count, the architecture against an
independent functional implementation written from the official formulas (causal padding, strided levels, 3D DCR
depth-to-space with the frame drop, adaptive group norm over (t, h, w)), hand cases, inflation from an image
tokenizer, the exact entropy over a clip's tokens, errors and our format."""

import pytest
import torch
import torch.nn.functional as F

from magvit2 import Tokenizer, TokenizerConfig, VideoTokenizer, VideoTokenizerConfig, ops
from magvit2.nn.video import CausalConv3d, Upsampler3D, VideoEncoder, depth_to_space3d
from magvit2.nn.video.tokenizer import VIDEO_PRESETS, inflate_state_dict

# A small official-architecture model: 3 levels (ch_mult (1, 2, 2): one spatial-only and one (2, 2, 2) level),
# 2 res blocks (so both the width change and the identity shortcut appear), z 18.
SMALL = VideoTokenizerConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2)


def test_video_128_L_layout_and_parameter_count():
    with torch.device("meta"):
        model = VideoTokenizer.from_preset("open-magvit2-video-128-L")
    sd = model.state_dict()
    count = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("encoder.", "decoder.")))
    assert count == 370_547_349  # the official Encoder + Decoder of ucf101_lfqfan_128_L.yaml
    shapes = {
        "encoder.conv_in.conv_1.weight": (128, 3, 3, 3, 3),
        "encoder.down.0.downsample.conv_1.weight": (128, 128, 3, 3, 3),  # stride (1, 2, 2)
        "encoder.down.1.downsample.conv_1.bias": (256,),  # stride (2, 2, 2)
        "encoder.down.1.block.0.nin_shortcut.conv_1.weight": (256, 128, 1, 1, 1),
        "encoder.conv_out.conv_1.weight": (18, 512, 1, 1, 1),
        "decoder.conv_in.conv_1.bias": (512,),
        "decoder.adaptive.3.gamma.weight": (512, 18),
        "decoder.up.3.upsample.conv1.conv_1.weight": (4096, 512, 3, 3, 3),  # block (2, 2, 2): 8x channels
        "decoder.up.1.upsample.conv1.conv_1.weight": (1024, 256, 3, 3, 3),  # block (1, 2, 2): 4x channels
        "decoder.conv_out.conv_1.weight": (3, 128, 3, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "encoder.conv_in.conv_1.bias" not in sd and "encoder.down.3.downsample.conv_1.weight" not in sd
    assert not any(k.startswith("quantizer") for k in sd)
    x = torch.empty(2, 3, 17, 128, 128, device="meta")
    q = model.encoder(x)
    assert q.shape == (2, 18, 5, 16, 16) and model.decoder(q).shape == (2, 3, 17, 128, 128)
    assert model.config.temporal_factor == 4 and model.downsample_factor == 8


# --- an independent implementation from the official formulas --------------------------------------------------


def ref_conv(x, sd, key, stride=(1, 1, 1)):
    w, b = sd[key + ".conv_1.weight"], sd.get(key + ".conv_1.bias")
    kt, kh, kw = w.shape[2:]
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0))  # causal in time: k - 1 frames on the left
    return F.conv3d(x, w, b, stride=stride)


def ref_gn(x, sd, key):
    return F.group_norm(x, 32, sd[key + ".weight"], sd[key + ".bias"], eps=1e-6)


def ref_res(x, sd, key):
    h = ref_conv(F.silu(ref_gn(x, sd, key + ".norm1")), sd, key + ".conv1")
    h = ref_conv(F.silu(ref_gn(h, sd, key + ".norm2")), sd, key + ".conv2")
    short = key + ".nin_shortcut"
    return h + (ref_conv(x, sd, short) if short + ".conv_1.weight" in sd else x)


def ref_d2s(x, block):
    """out[:, k, bt*t + it, bh*h + ih, bw*w + iw] = x[:, ((it*bh + ih)*bw + iw)*C + k, t, h, w], by strided writes."""
    bt, bh, bw = block
    b, c, t, h, w = x.shape
    c //= bt * bh * bw
    out = x.new_empty(b, c, t * bt, h * bh, w * bw)
    for it in range(bt):
        for ih in range(bh):
            for iw in range(bw):
                j = (it * bh + ih) * bw + iw
                out[:, :, it::bt, ih::bh, iw::bw] = x[:, j * c : (j + 1) * c]
    return out


def ref_encoder(x, sd, cfg):
    x = ref_conv(x, sd, "encoder.conv_in")
    for i, m in enumerate(cfg.ch_mult):
        for j in range(cfg.num_res_blocks):
            x = ref_res(x, sd, f"encoder.down.{i}.block.{j}")
        if i < len(cfg.ch_mult) - 1:
            x = ref_conv(x, sd, f"encoder.down.{i}.downsample", stride=(1, 2, 2) if m == 1 else (2, 2, 2))
    for j in range(cfg.num_res_blocks):
        x = ref_res(x, sd, f"encoder.mid_block.{j}")
    return ref_conv(F.silu(ref_gn(x, sd, "encoder.norm_out")), sd, "encoder.conv_out")


def ref_decoder(z, sd, cfg):
    flat = z.flatten(2)
    std, mean = (flat.var(dim=-1, unbiased=True) + 1e-6).sqrt(), flat.mean(dim=-1)
    x = ref_conv(z, sd, "decoder.conv_in")
    for j in range(cfg.num_res_blocks):
        x = ref_res(x, sd, f"decoder.mid_block.{j}")
    for i in reversed(range(len(cfg.ch_mult))):
        a = f"decoder.adaptive.{i}"
        scale = F.linear(std, sd[a + ".gamma.weight"], sd[a + ".gamma.bias"])[..., None, None, None]
        shift = F.linear(mean, sd[a + ".beta.weight"], sd[a + ".beta.bias"])[..., None, None, None]
        x = scale * F.group_norm(x, 32, eps=1e-6) + shift
        for j in range(cfg.num_res_blocks):
            x = ref_res(x, sd, f"decoder.up.{i}.block.{j}")
        if i > 0:
            block = (1, 2, 2) if cfg.ch_mult[i - 1] == 1 else (2, 2, 2)
            x = ref_d2s(ref_conv(x, sd, f"decoder.up.{i}.upsample.conv1"), block)
            if block[0] > 1:  # the duplicate of the first frame goes
                x = torch.cat([x[:, :, :1], x[:, :, 2:]], dim=2) if x.shape[2] > 2 else x[:, :, :1]
    return ref_conv(F.silu(ref_gn(x, sd, "decoder.norm_out")), sd, "decoder.conv_out")


def randomized(config, seed=0):
    """Random weights everywhere, norms and biases included (not the identity-like defaults)."""
    torch.manual_seed(seed)
    model = VideoTokenizer(config).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".weight") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("frames", [1, 3, 5])
def test_matches_the_official_formulas(frames):
    model = randomized(SMALL)
    sd = model.state_dict()
    x = torch.rand(2, 3, frames, 16, 16, dtype=torch.float64) * 2 - 1
    z = model.encoder(x)
    want_z = ref_encoder(x, sd, SMALL)
    assert z.shape == (2, 18, 1 + (frames - 1) // 2, 4, 4)
    torch.testing.assert_close(z, want_z, rtol=1e-4, atol=1e-4)
    q, indices = model.encode(x)
    bits = (want_z > 0).long().movedim(1, -1)  # LSB-first over the 18 channels
    assert torch.equal(indices, (bits << torch.arange(18)).sum(-1))
    rec = model.decode(q)
    assert rec.shape == x.shape
    torch.testing.assert_close(rec, ref_decoder(q, sd, SMALL), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.decode_indices(indices), rec)


def test_causal_conv_sees_only_past_frames():
    torch.manual_seed(0)
    conv = CausalConv3d(4, 6, 3, stride=(2, 2, 2)).double()
    x = torch.randn(1, 4, 9, 8, 8, dtype=torch.float64)
    y = conv(x)
    assert y.shape == (1, 6, 5, 4, 4)  # (9 - 1) // 2 + 1 frames
    # hand case: output frame t of a stride-2 kernel-3 conv reads input frames 2t - 2 .. 2t (zeros before frame 0)
    w, b = conv.conv_1.weight, conv.conv_1.bias
    padded = F.pad(x, (1, 1, 1, 1, 0, 0))
    for t in range(5):
        frames = [
            padded[:, :, 2 * t - 2 + i] if 2 * t - 2 + i >= 0 else torch.zeros_like(padded[:, :, 0]) for i in range(3)
        ]
        want = sum(F.conv2d(frames[i], w[:, :, i], stride=2) for i in range(3)) + b[:, None, None]
        torch.testing.assert_close(y[:, :, t], want, rtol=1e-12, atol=1e-12)
    x2 = x.clone()
    x2[:, :, 6:] += 1.0  # later frames change: outputs of frames <= 5 (t <= 2) stay
    y2 = conv(x2)
    assert torch.equal(y2[:, :, :3], y[:, :, :3]) and not torch.equal(y2[:, :, 3], y[:, :, 3])


def test_depth_to_space3d_and_the_frame_drop():
    x = torch.arange(2 * 8 * 2 * 1 * 1, dtype=torch.float64).view(1, 16, 2, 1, 1)
    assert torch.equal(depth_to_space3d(x, (2, 2, 2)), ref_d2s(x, (2, 2, 2)))
    assert depth_to_space3d(x, (2, 2, 2))[0, 1, 3, 1, 0].item() == x[0, ((1 * 2 + 1) * 2 + 0) * 2 + 1, 1, 0, 0].item()
    up = Upsampler3D(channels=32, block=(2, 2, 2)).double()
    for t, want in ((1, 1), (2, 3), (3, 5), (5, 9), (9, 17)):
        assert up(torch.randn(1, 32, t, 2, 2, dtype=torch.float64)).shape[2] == want
    v = torch.randn(1, 32, 3, 2, 2, dtype=torch.float64)
    full = depth_to_space3d(up.conv1(v), (2, 2, 2))  # 6 frames before the drop
    kept = up(v)
    assert torch.equal(kept[:, :, 0], full[:, :, 0]) and torch.equal(kept[:, :, 1:], full[:, :, 2:])
    assert Upsampler3D(channels=32, block=(1, 2, 2))(torch.randn(1, 32, 4, 2, 2)).shape == (1, 32, 4, 4, 4)


def test_inflated_model_tokenizes_each_frame_as_the_image_model():
    """Last-slice inflation: a clip of one frame goes through the video model as the image through the image model
    (same widths; the temporal upsampler's repeated weights included), and every frame of a static clip gets the
    image's tokens and the same reconstruction."""
    torch.manual_seed(3)
    image = Tokenizer(TokenizerConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2)).double().eval()
    with torch.no_grad():
        for name, p in image.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    video = VideoTokenizer(SMALL).double().eval().inflate_from_image(image)
    sd = video.state_dict()
    w2d, w3d = image.state_dict()["encoder.conv_in.weight"], sd["encoder.conv_in.conv_1.weight"]
    assert torch.equal(w3d[:, :, -1], w2d) and not w3d[:, :, :-1].any()
    up = sd["decoder.up.2.upsample.conv1.conv_1.weight"]  # block (2, 2, 2): the image's 4C outputs twice
    img_up = image.state_dict()["decoder.up.2.upsample.conv1.weight"]
    assert up.shape[0] == 2 * img_up.shape[0] and torch.equal(up[: img_up.shape[0], :, -1], img_up)
    assert torch.equal(up[img_up.shape[0] :, :, -1], img_up)
    img = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    q_img, idx_img = image.encode(img)
    q_vid, idx_vid = video.encode(img[:, :, None])
    assert torch.equal(idx_vid[:, 0], idx_img)
    torch.testing.assert_close(video.decode(q_vid)[:, :, 0], image.decode(q_img), rtol=1e-9, atol=1e-9)
    static = img[:, :, None].expand(-1, -1, 5, -1, -1)
    q_s, idx_s = video.encode(static)
    assert all(torch.equal(idx_s[:, t], idx_img) for t in range(idx_s.shape[1]))
    rec = video.decode(q_s)  # every frame alike (not the image's decode: AdaGN's unbiased variance counts t * h * w)
    for t in range(1, 5):
        torch.testing.assert_close(rec[:, :, t], rec[:, :, 0], rtol=1e-9, atol=1e-9)


def test_inflation_errors_name_the_key():
    video = VideoTokenizer(SMALL)
    image = Tokenizer(TokenizerConfig(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2)).state_dict()
    with pytest.raises(ValueError, match=r"inflate: encoder\.conv_in\.weight \(64, 3, 3, 3\) does not fit"):
        video.inflate_from_image(image)
    small = Tokenizer(TokenizerConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)).state_dict()
    with pytest.raises(ValueError, match=r"the image weights lack encoder\.down\.0\.block\.1\.norm1\.weight"):
        video.inflate_from_image(small)
    assert set(inflate_state_dict(Tokenizer(TokenizerConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2)).state_dict(),
                                  video.state_dict())) == set(video.state_dict())  # fmt: skip


def test_entropy_of_a_clip_is_the_exact_entropy_of_its_tokens():
    torch.manual_seed(1)
    model = VideoTokenizer.from_preset("tiny").train()
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    latents = model.encoder(x)
    out = model.quantizer(latents)
    tokens = latents.movedim(1, -1).reshape(-1, 18)  # every token of the batch: (B * t * h * w, K)
    per_sample, codebook = ops.lfq_entropy(tokens.float(), model.config.inv_temperature, eps=model.config.log_eps)
    torch.testing.assert_close(out.per_sample_entropy, per_sample)
    torch.testing.assert_close(out.codebook_entropy, codebook)
    out.loss.backward()
    assert model.encoder.conv_in.conv_1.weight.grad.abs().sum() > 0


def test_entropy_gradients_through_a_tiny_video_encoder_gradcheck():
    """The exact entropy of a clip's tokens, differentiated through a tiny causal encoder (float64, inverse
    temperature 1 so that no sigmoid saturates)."""
    torch.manual_seed(0)
    encoder = VideoEncoder(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=6).double()
    x = torch.rand(1, 3, 3, 4, 4, dtype=torch.float64, requires_grad=True)

    def entropies(x):
        tokens = encoder(x).movedim(1, -1).reshape(-1, 6)  # (t * h * w, K): 2 x 2 x 2 tokens
        return ops.lfq_entropy(tokens, 1.0, eps=1e-5)

    assert torch.autograd.gradcheck(entropies, (x,), fast_mode=True)


def test_bad_inputs_are_one_line_errors():
    model = VideoTokenizer.from_preset("tiny")
    with pytest.raises(ValueError, match=r"4 frames do not fit the temporal factor 2: .* e\.g\. 3"):
        model.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match=r"expected float videos \(B, 3, T, H, W\)"):
        model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"video size 15x16 is not a positive multiple of the downsampling factor 4"):
        model.encode(torch.zeros(1, 3, 5, 15, 16))
    with pytest.raises(ValueError, match=r"a token grid of 1x1x1 is too small"):
        model.decode(torch.ones(1, 18, 1, 1, 1))
    with pytest.raises(ValueError, match=r"expected \(B, t, h, w\) index tensors"):
        model.decode_indices(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="config must be a VideoTokenizerConfig"):
        VideoTokenizer(TokenizerConfig())
    with pytest.raises(ValueError, match=r"VideoTokenizerConfig\.z_channels must be an int"):
        VideoTokenizerConfig(z_channels=1e12)


def test_presets_and_our_format(tmp_path):
    assert set(VIDEO_PRESETS) == {"open-magvit2-video-128-L", "tiny"}
    with pytest.raises(ValueError, match="unknown preset 'open-magvit2-256-L'"):
        VideoTokenizer.from_preset("open-magvit2-256-L")
    model = randomized(VIDEO_PRESETS["tiny"]).float()
    model.save_pretrained(tmp_path / "video")
    loaded = VideoTokenizer.from_pretrained(tmp_path / "video")
    assert loaded.config == model.config and isinstance(loaded.config, VideoTokenizerConfig)
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )
    with pytest.raises(Exception, match="not a magvit2-tokenizer config"):
        Tokenizer.from_pretrained(tmp_path / "video")


def test_3d_discriminator_layout_and_patch_map():
    from magvit2.nn import PatchDiscriminator3D

    with torch.device("meta"):
        d = PatchDiscriminator3D()
    assert sum(p.numel() for p in d.parameters()) == 4_665_729  # the official NLayerDiscriminator3D(3, 64, 3)
    shapes = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert shapes["main.0.weight"] == (64, 3, 3, 3, 3) and shapes["main.0.bias"] == (64,)
    assert shapes["main.5.weight"] == (256, 128, 3, 3, 3) and "main.5.bias" not in shapes
    assert shapes["main.9.running_mean"] == (512,) and shapes["main.11.weight"] == (1, 512, 3, 3, 3)
    assert [m.stride for m in d.main if isinstance(m, torch.nn.Conv3d)] == [
        (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1)]  # fmt: skip
    assert d(torch.empty(2, 3, 17, 128, 128, device="meta")).shape == (2, 1, 5, 16, 16)
    with pytest.raises(ValueError, match=r"PatchDiscriminator3D: x must be \(B, 3, T, H, W\)"):
        PatchDiscriminator3D()(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="PatchDiscriminator3D: ndf must be a positive int"):
        PatchDiscriminator3D(ndf=0)
