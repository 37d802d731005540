"""Tokenizer losses against hand-computed values; discriminator and LPIPS key layouts of the official checkpoint."""

import math

import pytest
import torch

from magvit2.nn import LFQ
from magvit2.nn.image.discriminator import PatchDiscriminator
from magvit2.nn.losses import (
    LeCAM,
    LossConfig,
    TokenizerLoss,
    adaptive_generator_weight,
    entropy_weight_scale,
    hinge_d_loss,
    non_saturating_g_loss,
    vanilla_d_loss,
)
from magvit2.nn.lpips import LPIPS, SLICES, VGG16_CONVS, find_lpips_heads


def _loss(config: LossConfig) -> TokenizerLoss:
    """The loss around the image tokenizer's discriminator, as the tokenizer trainer builds it."""
    return TokenizerLoss(config, discriminator=PatchDiscriminator(ndf=config.disc_ndf, n_layers=config.disc_layers))


def test_hinge_d_loss_hand_computed():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 0.3])
    # 0.5 * (mean(relu(1 - [0.5, 2])) + mean(relu(1 + [-0.5, 0.3]))) = 0.5 * (0.25 + 0.9)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.575, abs=1e-7)


def test_vanilla_d_loss_hand_computed():
    real, fake = torch.tensor([0.0]), torch.tensor([0.0])
    assert vanilla_d_loss(real, fake).item() == pytest.approx(math.log(2), abs=1e-7)


def test_non_saturating_g_loss_averages_logits_per_sample_first():
    logits = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[0.0, 0.0], [2.0, -2.0]]]])  # (2, 1, 2, 2)
    expected = 0.5 * (math.log1p(math.exp(-1.0)) + math.log(2.0))
    assert non_saturating_g_loss(logits).item() == pytest.approx(expected, abs=1e-7)
    # per-pixel softplus would differ: the spatial mean comes first
    assert F_softplus_mean(logits) != pytest.approx(expected, abs=1e-4)


def F_softplus_mean(logits):
    return torch.nn.functional.softplus(-logits).mean().item()


def test_lecam_ema_update_and_regulariser():
    reg = LeCAM(decay=0.9)
    real, fake = torch.ones(2, 1, 2, 2), -torch.ones(2, 1, 2, 2)
    # step 1: ema_real = 0.1, ema_fake = -0.1; reg = relu(1 + 0.1)^2 + relu(0.1 + 1)^2
    assert reg(real, fake).item() == pytest.approx(2 * 1.1**2, abs=1e-6)
    assert reg.ema_real.item() == pytest.approx(0.1) and reg.ema_fake.item() == pytest.approx(-0.1)
    # step 2: ema_real = 0.9 * 0.1 + 0.1 * 1 = 0.19
    assert reg(real, fake).item() == pytest.approx(2 * 1.19**2, abs=1e-6)
    assert reg.ema_real.item() == pytest.approx(0.19)
    assert set(reg.state_dict()) == {"ema_real", "ema_fake"}  # checkpointed, unlike the official Python floats


def test_lecam_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        LeCAM(decay=1.0)


def test_adaptive_weight_is_ratio_of_gradient_norms():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    nll = (w * torch.tensor([3.0, 4.0])).sum()  # gradient (3, 4), norm 5
    g = (w * torch.tensor([0.0, 2.0])).sum()  # gradient (0, 2), norm 2
    weight = adaptive_generator_weight(nll, g, w, disc_weight=0.8)
    assert weight.item() == pytest.approx(5 / (2 + 1e-4) * 0.8, rel=1e-6)
    assert not weight.requires_grad
    huge = adaptive_generator_weight((w * 1e9).sum(), (w * 0.0).sum(), w, disc_weight=1.0)
    assert huge.item() == pytest.approx(1e4)  # clamped


def test_entropy_weight_warmup_factor():
    assert entropy_weight_scale(25, enlarge_ratio=2.0, enlarge_steps=100) == pytest.approx(2.5)
    assert entropy_weight_scale(200, enlarge_ratio=2.0, enlarge_steps=100) == 1.0
    assert entropy_weight_scale(0, enlarge_ratio=0.0, enlarge_steps=100) == 1.0


OFFICIAL_DISC = {
    "main.0.weight": (64, 3, 4, 4), "main.0.bias": (64,),
    "main.2.weight": (128, 64, 4, 4), "main.3.weight": (128,), "main.3.bias": (128,),
    "main.3.running_mean": (128,), "main.3.running_var": (128,), "main.3.num_batches_tracked": (),
    "main.5.weight": (256, 128, 4, 4), "main.6.weight": (256,), "main.6.bias": (256,),
    "main.6.running_mean": (256,), "main.6.running_var": (256,), "main.6.num_batches_tracked": (),
    "main.8.weight": (512, 256, 4, 4), "main.9.weight": (512,), "main.9.bias": (512,),
    "main.9.running_mean": (512,), "main.9.running_var": (512,), "main.9.num_batches_tracked": (),
    "main.11.weight": (1, 512, 4, 4), "main.11.bias": (1,),
}  # fmt: skip


def test_discriminator_official_keys_shapes_and_size():
    d = PatchDiscriminator()
    assert {k: tuple(v.shape) for k, v in d.state_dict().items()} == OFFICIAL_DISC
    assert sum(p.numel() for p in d.parameters()) == 2_765_633  # 2.77M (reference §3.2)
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert d.main[3].weight.mean().item() == pytest.approx(1.0, abs=0.01)  # BN weight ~ N(1, 0.02)


def test_discriminator_bad_input():
    with pytest.raises(ValueError, match=r"x must be \(B, 3, H, W\)"):
        PatchDiscriminator()(torch.zeros(1, 4, 64, 64))
    with pytest.raises(ValueError, match="ndf"):
        PatchDiscriminator(ndf=0)


def _official_lpips_keys():
    keys = {"scaling_layer.shift": (1, 3, 1, 1), "scaling_layer.scale": (1, 3, 1, 1)}
    for s, (a, b) in enumerate(SLICES, 1):
        for i in range(a, b):
            if i in VGG16_CONVS:
                cin, cout = VGG16_CONVS[i]
                keys[f"net.slice{s}.{i}.weight"] = (cout, cin, 3, 3)
                keys[f"net.slice{s}.{i}.bias"] = (cout,)
    for i, c in enumerate((64, 128, 256, 512, 512)):
        keys[f"lin{i}.model.1.weight"] = (1, c, 1, 1)
    return keys


def test_lpips_official_keys_and_bundled_heads():
    lp = LPIPS(backbone=None, random_backbone=True)
    assert {k: tuple(v.shape) for k, v in lp.state_dict().items()} == _official_lpips_keys()
    assert "net.slice2.5.weight" in lp.state_dict() and "net.slice5.28.bias" in lp.state_dict()
    heads = find_lpips_heads()
    assert heads is not None, "torchmetrics (installed with lightning) ships the LPIPS v0.1 heads"
    stored = torch.load(heads, map_location="cpu", weights_only=True)
    assert torch.equal(lp.lin0.model[1].weight, stored["lin0.model.1.weight"])
    assert all(not p.requires_grad for p in lp.parameters())


def test_lpips_loads_torchvision_format_backbone(tmp_path):
    torch.manual_seed(0)
    source = LPIPS(backbone=None, random_backbone=True)
    tv = {}
    for s in range(1, 6):
        for k, v in getattr(source.net, f"slice{s}").state_dict().items():
            tv[f"features.{k}"] = v.clone()
    tv["classifier.0.weight"] = torch.zeros(4096, 25088)  # torchvision files carry the classifier: ignored
    torch.save(tv, tmp_path / "vgg16.pth")
    torch.manual_seed(1)
    lp = LPIPS(backbone=tmp_path / "vgg16.pth")
    assert lp.backbone_source.endswith("vgg16.pth")
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(lp(x, y), source(x, y))


def test_lpips_distance_properties():
    torch.manual_seed(0)
    lp = LPIPS(backbone=None, random_backbone=True)
    x = torch.rand(3, 3, 48, 48) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    d = lp(x, y)
    assert d.shape == (3, 1, 1, 1)
    assert torch.all(lp(x, x) == 0)
    assert torch.all(d > 0)
    torch.testing.assert_close(d, lp(y, x))
    farther = lp(x, (x + 0.8 * torch.randn_like(x)).clamp(-1, 1))
    assert torch.all(farther > d)


def test_lpips_errors(tmp_path):
    with pytest.raises(ValueError, match="backbone=None"):
        LPIPS(backbone=None)
    with pytest.raises(FileNotFoundError, match="backbone file not found"):
        LPIPS(backbone=tmp_path / "missing.pth")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="torchvision VGG16 keys"):
        LPIPS(backbone=tmp_path / "bad.pth")
    lp = LPIPS(backbone=None, random_backbone=True)
    with pytest.raises(ValueError, match="one shape"):
        lp(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 16))


def _lfq_output(seed=0):
    torch.manual_seed(seed)
    q = LFQ(dim=8, entropy_weight=0.1, commitment_weight=0.25).train()
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    return q, q(z)


def test_generator_loss_sums_the_official_terms():
    q, lfq = _lfq_output()
    torch.manual_seed(3)
    loss = _loss(LossConfig(perceptual_weight=0.0, gen_loss_weight=0.1, disc_ndf=8, disc_layers=2))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    rec = x + 0.1 * torch.randn_like(x)
    out = loss.generator_loss(x, rec, lfq, q, step=0)
    l1 = (x - rec).abs().mean()
    g = non_saturating_g_loss(loss.discriminator(rec))
    entropy = lfq.per_sample_entropy - lfq.codebook_entropy
    expected = l1 + 0.1 * g + 0.1 * entropy + 0.25 * lfq.commitment
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logs["g"], g.detach())


def test_generator_loss_before_disc_start_and_adaptive_weight():
    q, lfq = _lfq_output()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    last = torch.nn.Parameter(torch.randn(3, 4))
    rec = x + (last.sum() * 0.01)
    loss = _loss(LossConfig(perceptual_weight=0.0, gen_loss_weight=None, disc_start=5, disc_ndf=8))
    early = loss.generator_loss(x, rec, lfq, q, step=4, last_layer=last)
    assert "g" not in early.logs
    late = loss.generator_loss(x, rec, lfq, q, step=5, last_layer=last)
    assert "g_weight" in late.logs and late.logs["g_weight"].item() > 0
    with pytest.raises(ValueError, match="last_layer"):
        loss.generator_loss(x, rec, lfq, q, step=5)


def test_discriminator_loss_with_lecam():
    torch.manual_seed(0)
    loss = _loss(LossConfig(perceptual_weight=0.0, lecam_weight=0.05, disc_ndf=8, disc_layers=2))
    x, rec = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = loss.discriminator_loss(x, rec, step=0)
    assert out.loss.requires_grad
    torch.testing.assert_close(out.loss, out.logs["d_adv"] + 0.05 * out.logs["lecam"])
    assert loss.lecam.ema_real.item() != 0.0
    off = _loss(LossConfig(perceptual_weight=0.0, disc_start=10, disc_ndf=8)).discriminator_loss(x, rec, step=3)
    assert off.loss.item() == 0.0 and not off.loss.requires_grad


def test_loss_config_validation_and_lpips_warning():
    with pytest.raises(ValueError, match="disc_loss"):
        LossConfig(disc_loss="wgan")
    with pytest.raises(ValueError, match="lecam_weight"):
        LossConfig(lecam_weight=-1.0)
    with pytest.warns(UserWarning, match="LPIPS disabled"):
        assert _loss(LossConfig(perceptual_weight=1.0, disc_ndf=8)).perceptual_loss is None
    assert _loss(LossConfig(lpips_random=True, disc_ndf=8)).perceptual_loss is not None
