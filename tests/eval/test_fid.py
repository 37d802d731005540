"""FID Inception layout and loading, FeatureStats against numpy, Fréchet distance against closed forms and scipy."""

import struct
import zipfile

import numpy as np
import pytest
import scipy.linalg as scipy_linalg
import torch
import torch.nn.functional as F

from magvit2.eval import FeatureStats, InceptionV3FID, frechet_distance

# Conv names of torchvision's Inception3 blocks (each is conv + bn) as pytorch-fid's FID variant uses them.
STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
BLOCK_A = [
    "branch1x1",
    "branch5x5_1",
    "branch5x5_2",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3",
    "branch_pool",
]
BLOCK_B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
BLOCK_C = [
    "branch1x1",
    *(f"branch7x7_{i}" for i in range(1, 4)),
    *(f"branch7x7dbl_{i}" for i in range(1, 6)),
    "branch_pool",
]
BLOCK_D = ["branch3x3_1", "branch3x3_2", *(f"branch7x7x3_{i}" for i in range(1, 5))]
BLOCK_E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
           "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]  # fmt: skip
MIXED = {"5b": BLOCK_A, "5c": BLOCK_A, "5d": BLOCK_A, "6a": BLOCK_B, "6b": BLOCK_C, "6c": BLOCK_C, "6d": BLOCK_C,
         "6e": BLOCK_C, "7a": BLOCK_D, "7b": BLOCK_E, "7c": BLOCK_E}  # fmt: skip
# Shapes read off torchvision's inception.py / pytorch-fid's fid_inception_v3 (num_classes=1008, aux_logits=False).
SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch_pool.conv.weight": (64, 288, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_2.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch1x1.conv.weight": (320, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def _expected_keys() -> set[str]:
    convs = STEM + [f"Mixed_{m}.{b}" for m, names in MIXED.items() for b in names]
    suffixes = ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    return {f"{c}.{s}" for c in convs for s in suffixes} | {"fc.weight", "fc.bias"}


# --- InceptionV3FID -------------------------------------------------------------------------------------------------


def test_state_dict_layout_is_the_fid_weights_file(inception):
    sd = inception.state_dict()
    assert len(sd) == 472  # 94 conv+BN pairs x 5 tensors + fc weight/bias; no num_batches_tracked
    assert set(sd) == _expected_keys()
    for key, shape in SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert all(t.dtype == torch.float32 for t in sd.values())
    assert inception.Mixed_5b.branch1x1.bn.eps == 1e-3
    assert sum(t.numel() for t in sd.values()) == 23_885_392


@pytest.mark.parametrize("size", [64, 299])
def test_features_shape(inception, size):
    batch = 2 if size == 64 else 1  # every input is resized to 299 first: one image is enough for the second case
    x = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.inference_mode():
        f = inception(x)
    assert f.shape == (batch, 2048) and f.dtype == torch.float32
    assert torch.isfinite(f).all() and (f >= 0).all()  # mean of ReLU outputs
    assert f.std() > 1e-3  # not collapsed to a constant
    if batch == 2:
        assert not torch.allclose(f[0], f[1])


def test_pool_branches_follow_the_tf_graph(inception):
    """A/C/E_1 average-pool without counting the zero padding; E_2 (Mixed_7c) max-pools."""
    g = torch.Generator().manual_seed(3)
    cases = [
        (inception.Mixed_5b, 192, 32, "avg"),
        (inception.Mixed_6b, 768, 192, "avg"),
        (inception.Mixed_7b, 1280, 192, "avg"),
        (inception.Mixed_7c, 2048, 192, "max"),
    ]
    for block, cin, pool_ch, kind in cases:
        x = torch.rand(1, cin, 5, 5, generator=g) + torch.linspace(0, 3, 5)  # positive, so padding matters
        with torch.inference_mode():
            out = block(x)[:, -pool_ch:]
            if kind == "avg":
                want = block.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
                padded = block.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True))
            else:
                want = block.branch_pool(F.max_pool2d(x, 3, stride=1, padding=1))
                padded = block.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        assert not torch.allclose(out, padded)


def test_from_file_round_trip(inception, tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    sd = dict(inception.state_dict())
    sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)  # as a newer PyTorch re-save has: ignored
    torch.save(sd, path)
    loaded = InceptionV3FID.from_file(path)
    assert not loaded.training
    for name, t in inception.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    x = torch.rand(1, 3, 48, 48) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), inception(x), rtol=0, atol=0)


def _placeholders(inception) -> dict[str, torch.Tensor]:
    """The right keys and shapes as zero-stride views: torch.save writes one element each, not 95 MB."""
    return {k: torch.zeros((), dtype=t.dtype).expand(t.shape) for k, t in inception.state_dict().items()}


def test_from_file_errors(inception, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path .*nope\.pth.*pt_inception-2015-12-05-6726825d\.pth"):
        InceptionV3FID.from_file(tmp_path / "nope.pth")
    sd = _placeholders(inception)
    del sd["Mixed_7c.branch_pool.bn.running_var"]
    sd["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    torch.save(sd, tmp_path / "keys.pth")
    with pytest.raises(ValueError, match=r"1 missing key\(s\) \[Mixed_7c\.branch_pool\.bn\.running_var\].*"
                                         r"1 unexpected key\(s\) \[AuxLogits\.fc\.weight\]"):  # fmt: skip
        InceptionV3FID.from_file(tmp_path / "keys.pth")
    sd = _placeholders(inception)
    sd["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"fc\.weight \(1000, 2048\) \(expected \(1008, 2048\)\)"):
        InceptionV3FID.from_file(tmp_path / "shape.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        InceptionV3FID.from_file(tmp_path / "list.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        InceptionV3FID.from_file(tmp_path / "garbage.pth")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        inception(torch.rand(3, 32, 32))


class Gadget:  # a class of this module: torch's weights-only allowlist does not have it
    pass


def test_from_file_errors_are_one_line_for_unsafe_corrupt_and_dataless_files(inception, tmp_path):
    torch.save({"fc.weight": Gadget()}, tmp_path / "unsafe.pth")
    with pytest.raises(ValueError) as info:
        InceptionV3FID.from_file(tmp_path / "unsafe.pth")
    text = str(info.value)
    assert text.startswith("InceptionV3FID.from_file: refusing to load ") and "Gadget" in text
    assert "\n" not in text and "weights_only=False" not in text  # torch's 7-line advice is not passed on

    torch.save(_placeholders(inception), tmp_path / "ok.pth")
    data = bytearray((tmp_path / "ok.pth").read_bytes())
    pickle = next(i for i in zipfile.ZipFile(tmp_path / "ok.pth").infolist() if i.filename.endswith("data.pkl"))
    name_len, extra_len = struct.unpack("<HH", data[pickle.header_offset + 26 : pickle.header_offset + 30])
    data[pickle.header_offset + 30 + name_len + extra_len + pickle.compress_size // 2] ^= 0x10  # inside the pickle
    (tmp_path / "flipped.pth").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"^InceptionV3FID.from_file: \S+flipped.pth is corrupt: member \S+ fails"):
        InceptionV3FID.from_file(tmp_path / "flipped.pth")

    for name, value in (("meta", torch.empty(1008, 2048, device="meta")), ("list", [0.0] * 1008)):
        sd = _placeholders(inception)
        sd["fc.weight"] = value
        torch.save(sd, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match=r"holds values that are not tensors with data: \[fc.weight"):
            InceptionV3FID.from_file(tmp_path / f"{name}.pth")


# --- FeatureStats ---------------------------------------------------------------------------------------------------


def test_feature_stats_match_numpy():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(70, 12, generator=g) * torch.linspace(0.1, 5, 12) + 3.0
    ref_mu, ref_cov = feats.double().mean(0).numpy(), np.cov(feats.double().numpy(), rowvar=False)

    one = FeatureStats()
    one.update(feats)
    batched = FeatureStats(12)
    for chunk in feats.split([1, 20, 33, 16]):
        batched.update(chunk)
    a, b = FeatureStats(), FeatureStats()
    a.update(feats[:25])
    b.update(feats[25:])
    merged = a.merge(b)
    for stats in (one, batched, merged):
        assert stats.num_samples == 70
        np.testing.assert_allclose(stats.mean.numpy(), ref_mu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats.covariance.numpy(), ref_cov, rtol=1e-10, atol=1e-12)
        assert stats.mean.dtype == stats.covariance.dtype == torch.float64


def test_feature_stats_state_sums_like_all_reduce():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(40, 5, generator=g)
    ranks = [FeatureStats(), FeatureStats()]
    ranks[0].update(feats[:10])
    ranks[1].update(feats[10:])
    # what dist.all_reduce(SUM) does to every tensor of state(), in place
    states = [r.state() for r in ranks]
    totals = {k: states[0][k] + states[1][k] for k in states[0]}
    for s in states:
        for k, t in s.items():
            t.copy_(totals[k])
    for r in ranks:
        assert r.num_samples == 40
        np.testing.assert_allclose(r.covariance.numpy(), np.cov(feats.double().numpy(), rowvar=False), atol=1e-12)


def test_feature_stats_errors():
    s = FeatureStats()
    with pytest.raises(ValueError, match="no features"):
        s.mean  # noqa: B018
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        s.update(torch.zeros(3))
    s.update(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        s.covariance  # noqa: B018
    with pytest.raises(ValueError, match="expected 4 features"):
        s.update(torch.zeros(2, 5))
    other = FeatureStats()
    other.update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="differ"):
        s.merge(other)


# --- frechet_distance -----------------------------------------------------------------------------------------------


def _pytorch_fid_reference(mu1, sigma1, mu2, sigma2, eps=1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance formula with scipy.linalg.sqrtm (written from its description)."""
    diff = mu1 - mu2
    covmean = scipy_linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy_linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d) + 0.05 * np.eye(d)


def test_identical_features_give_zero():
    g = torch.Generator().manual_seed(2)
    for n, d in [(200, 16), (10, 32)]:  # the second covariance is singular (rank 9)
        s = FeatureStats()
        s.update(torch.randn(n, d, generator=g) * 2 + 1)
        assert frechet_distance(s.mean, s.covariance, s.mean, s.covariance) == pytest.approx(0, abs=1e-6)


def test_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(0)
    d = 20
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) + 0.5
    v1, v2 = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    want = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2))
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-10)
    # a rotation of both Gaussians leaves the distance unchanged
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    rot = frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert rot == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("d", [3, 40, 128])
def test_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    s1, s2 = _random_spd(d, rng), _random_spd(d, rng)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    want = _pytorch_fid_reference(mu1, s1, mu2, s2)
    got = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), mu2, s2)
    assert got == pytest.approx(want, rel=1e-8, abs=1e-8)


def test_zero_covariance():
    # every sample identical: sigma = 0, the distance is |mu1 - mu2|^2 + tr(sigma2)
    assert frechet_distance(np.zeros(3), np.zeros((3, 3)), np.ones(3), 2 * np.eye(3)) == pytest.approx(9.0)
    assert frechet_distance(np.ones(3), 2 * np.eye(3), np.zeros(3), np.zeros((3, 3))) == pytest.approx(9.0)


def test_shape_errors():
    mu, s = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="means"):
        frechet_distance(mu, s, np.zeros(5), s)
    with pytest.raises(ValueError, match=r"sigma2 must be \(4, 4\)"):
        frechet_distance(mu, s, mu, np.eye(3))
    with pytest.raises(ValueError, match=r"sigma1 must be \(4, 4\)"):
        frechet_distance(mu, np.zeros(4), mu, s)
