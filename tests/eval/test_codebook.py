"""CodebookCounter against numpy, utilisation / perplexity values, errors, and the usage PNG."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from magvit2.eval import CodebookCounter, save_usage_histogram, usage_perplexity


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_counts_match_numpy(dtype):
    size = 200
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, size, shape, generator=g) for shape in [(2, 4, 4), (1, 7, 3), (5,), (0, 3)]]
    counter = CodebookCounter(size)
    for b in batches:
        counter.update(b.to(dtype))
    everything = np.concatenate([b.numpy().ravel() for b in batches])
    ref = np.bincount(everything, minlength=size)
    assert counter.counts.dtype == torch.int64 and counter.counts.shape == (size,)
    np.testing.assert_array_equal(counter.counts.numpy(), ref)
    assert counter.total == everything.size
    assert counter.used == len(set(everything.tolist()))  # the official dict-of-indices count
    assert counter.utilization == pytest.approx(counter.used / size)
    p = ref[ref > 0] / ref.sum()
    assert counter.perplexity == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)


def test_non_contiguous_indices():
    idx = torch.arange(24).view(4, 6).t()[::2]  # strided view
    counter = CodebookCounter(32)
    counter.update(idx)
    np.testing.assert_array_equal(counter.counts.numpy(), np.bincount(idx.numpy().ravel(), minlength=32))


def test_utilization_and_perplexity_values():
    counter = CodebookCounter(2**18)
    assert counter.used == 0 and counter.utilization == 0.0 and counter.perplexity == 0.0
    counter.update(torch.zeros(4, 8, 8, dtype=torch.long))
    assert counter.used == 1 and counter.perplexity == pytest.approx(1.0)
    uniform = CodebookCounter(16)
    uniform.update(torch.arange(16).repeat(3))
    assert uniform.utilization == 1.0 and uniform.perplexity == pytest.approx(16.0)
    half = CodebookCounter(16)
    half.update(torch.tensor([0, 0, 0, 1, 2, 3, 4, 5]))  # p = 3/8 and 5 x 1/8
    h = -(3 / 8 * math.log(3 / 8) + 5 / 8 * math.log(1 / 8))
    assert half.utilization == 6 / 16 and half.perplexity == pytest.approx(math.exp(h), rel=1e-12)
    assert usage_perplexity(torch.tensor([2, 2, 0, 0])) == pytest.approx(2.0)


def test_errors():
    counter = CodebookCounter(8)
    with pytest.raises(ValueError, match=r"\[0, 8\), got values in \[0, 8\]"):
        counter.update(torch.tensor([0, 8]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 3\]"):
        counter.update(torch.tensor([[-1, 3]]))
    with pytest.raises(TypeError, match="integer tensor"):
        counter.update(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="integer tensor"):
        counter.update(torch.tensor([True]))
    with pytest.raises(TypeError, match="integer tensor"):
        counter.update([1, 2])
    assert counter.total == 0  # failed updates leave the counts alone
    with pytest.raises(ValueError, match="positive"):
        CodebookCounter(0)


@pytest.mark.parametrize("usage", ["skewed", "all_used", "none_used"])
def test_usage_histogram_png(tmp_path, usage):
    size = 2**18
    g = torch.Generator().manual_seed(0)
    counter = CodebookCounter(size)
    if usage == "skewed":
        counter.update((torch.rand(300_000, generator=g) ** 4 * size).long())
    elif usage == "all_used":
        counter.update(torch.arange(size).repeat(2))
    path = tmp_path / "sub" / "codebook_usage.png"
    save_usage_histogram(counter.counts, path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (900, 420)
        pixels = np.asarray(im.convert("RGB"))
    curve = (pixels[..., 2] > 150) & (pixels[..., 0] < 100)  # the blue curve
    assert curve.any() == (usage != "none_used")
    if usage == "skewed":
        # a long tail: the curve spans many pixel columns, not one spike
        cols = np.flatnonzero(curve.any(0))
        assert cols.max() - cols.min() > 100
    with pytest.raises(ValueError, match="empty"):
        save_usage_histogram(torch.zeros(0, dtype=torch.long), tmp_path / "x.png")
