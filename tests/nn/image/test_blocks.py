"""Blocks pinned to the official conventions with hand-computed cases: DCR depth-to-space (not PixelShuffle),
adaptive group norm with the unbiased variance, bias-free ResBlock convs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from magvit2.nn.image.blocks import AdaptiveGroupNorm, ResBlock, Upsampler, depth_to_space, style_stats


def test_depth_to_space_is_dcr_by_hand():
    x = torch.arange(8.0).view(1, 8, 1, 1)  # 2 output channels, block 2
    out = depth_to_space(x, 2)
    # out[k, r1, r2] = x[(r1 * 2 + r2) * 2 + k]
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0].tolist() == [[0.0, 2.0], [4.0, 6.0]]
    assert out[0, 1].tolist() == [[1.0, 3.0], [5.0, 7.0]]
    # nn.PixelShuffle is CRD: out[k, r1, r2] = x[k * 4 + r1 * 2 + r2] -- a different map
    assert nn.PixelShuffle(2)(x)[0, 0].tolist() == [[0.0, 1.0], [2.0, 3.0]]


@pytest.mark.parametrize("shape", [(2, 12, 3, 5), (1, 4, 1, 1), (3, 64, 4, 4)], ids=lambda s: "x".join(map(str, s)))
def test_depth_to_space_matches_index_formula(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    b, c, h, w = shape
    k = c // 4
    expected = torch.empty(b, k, 2 * h, 2 * w)
    for r1 in range(2):
        for r2 in range(2):
            expected[:, :, r1::2, r2::2] = x[:, (r1 * 2 + r2) * k : (r1 * 2 + r2 + 1) * k]
    assert torch.equal(depth_to_space(x), expected)
    cl = depth_to_space(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(cl, expected)
    if h * w > 1:
        assert cl.is_contiguous(memory_format=torch.channels_last)


def test_depth_to_space_rejects_bad_channels():
    with pytest.raises(ValueError, match="not divisible"):
        depth_to_space(torch.zeros(1, 6, 2, 2))


def test_upsampler_by_hand():
    up = Upsampler(channels=1)
    with torch.no_grad():
        up.conv1.weight.zero_()
        up.conv1.weight[:, 0, 1, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # centre tap: channel j = (j + 1) * x
        up.conv1.bias.zero_()
    x = torch.tensor([[[[1.0, 10.0]]]])  # (1, 1, 1, 2)
    out = up(x)
    assert out.shape == (1, 1, 2, 4)
    assert out[0, 0].tolist() == [[1.0, 2.0, 10.0, 20.0], [3.0, 4.0, 30.0, 40.0]]
    assert up.conv1.bias is not None and up.conv1.weight.shape == (4, 1, 3, 3)


def test_adaptive_group_norm_unbiased_variance_by_hand():
    agn = AdaptiveGroupNorm(z_channels=1, channels=32)
    with torch.no_grad():
        agn.gamma.weight.fill_(1.0)
        agn.gamma.bias.zero_()
        agn.beta.weight.fill_(2.0)
        agn.beta.bias.fill_(0.25)
    style = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]]]])  # mean 0.5; unbiased var 1.0 (biased 0.75)
    stats = style_stats(style)
    assert stats.mean.item() == 0.5
    assert stats.std.item() == pytest.approx(math.sqrt(1.0 + 1e-6), abs=1e-7)
    x = torch.tensor([0.0, 2.0]).view(1, 1, 1, 2).repeat(1, 32, 1, 1)  # each group: values 0, 2 -> GN (-1, 1)
    out = agn(x, style)
    # scale = sqrt(1 + 1e-6) cancels GN's 1 / sqrt(1 + 1e-6); bias = 2 * 0.5 + 0.25
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.25, 2.25]).expand(32, 2), atol=1e-6, rtol=0)
    biased = math.sqrt(0.75 + 1e-6) / math.sqrt(1 + 1e-6)
    assert abs(out[0, 0, 0, 0].item() - (1.25 - biased)) > 0.1  # the biased variance would give 0.384


def test_adaptive_group_norm_layout():
    agn = AdaptiveGroupNorm(z_channels=18, channels=64)
    assert agn.gn.affine is False and agn.gn.num_groups == 32 and agn.gn.eps == 1e-6
    assert {k: tuple(v.shape) for k, v in agn.state_dict().items()} == {
        "gamma.weight": (64, 18),
        "gamma.bias": (64,),
        "beta.weight": (64, 18),
        "beta.bias": (64,),
    }


def test_resblock_layout_and_identity_residual():
    same = ResBlock(in_channels=64, out_channels=64)
    wider = ResBlock(in_channels=32, out_channels=64)
    assert same.conv1.bias is None and same.conv2.bias is None and same.nin_shortcut is None
    assert wider.nin_shortcut.bias is None and wider.nin_shortcut.kernel_size == (1, 1)
    assert same.norm1.num_groups == 32 and same.norm1.eps == 1e-6
    assert set(wider.state_dict()) == {
        "norm1.weight", "norm1.bias", "conv1.weight", "norm2.weight", "norm2.bias", "conv2.weight",
        "nin_shortcut.weight",
    }  # fmt: skip
    x = torch.randn(2, 32, 5, 6)
    with torch.no_grad():
        same.conv2.weight.zero_()
        wider.conv2.weight.zero_()
    y = torch.randn(2, 64, 5, 6)
    assert torch.equal(same(y), y)  # zero residual branch: x + 0
    torch.testing.assert_close(wider(x), F.conv2d(x, wider.nin_shortcut.weight))


def test_resblock_matches_formula():
    torch.manual_seed(1)
    block = ResBlock(in_channels=32, out_channels=64)
    for p in block.parameters():
        nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 32, 6, 4)

    def swish(t):
        return t * torch.sigmoid(t)

    h = F.conv2d(swish(F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, 1e-6)), block.conv1.weight, padding=1)
    h = F.conv2d(swish(F.group_norm(h, 32, block.norm2.weight, block.norm2.bias, 1e-6)), block.conv2.weight, padding=1)
    torch.testing.assert_close(block(x), h + F.conv2d(x, block.nin_shortcut.weight))
