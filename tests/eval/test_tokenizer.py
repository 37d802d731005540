"""evaluate_tokenizer on the tiny preset: values against direct computation, factorized indices, rFID, report files."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from magvit2 import Tokenizer
from magvit2.data.tokens import pack_groups
from magvit2.eval import (
    CodebookCounter,
    TokenizerMetrics,
    evaluate_tokenizer,
    psnr,
    quantize_uint8,
    ssim,
    write_report,
)


@pytest.fixture(scope="module")
def tiny() -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer.from_preset("tiny").eval()


def _direct(model: Tokenizer, x: torch.Tensor):
    with torch.no_grad():
        quantized, indices = model.encode(x)
        rec = model.decode(quantized).clamp(-1, 1)
    return rec, indices


class _Identity(nn.Module):
    """A perfect 'tokenizer': rec == x; every token gets index 3."""

    config = SimpleNamespace(z_channels=4, factorized_bits=None)

    def encode(self, x):
        return x, torch.full((x.shape[0], 2, 2), 3, dtype=torch.long)

    def decode(self, q):
        return q


def test_metrics_match_direct_computation(tiny, crops32):
    x = crops32  # (6, 3, 32, 32): 6 images, 8x8 tokens each
    batches = [(x[i : i + 2], torch.arange(2)) for i in range(0, 6, 2)]  # DataLoader-style tuples
    m = evaluate_tokenizer(tiny, batches, progress=False)
    assert isinstance(m, TokenizerMetrics)
    # the same batches (float32 convolutions round differently with another batch size, moving a few uint8 levels)
    rec, indices = (torch.cat(t) for t in zip(*(_direct(tiny, b) for b, _ in batches), strict=True))
    assert m.num_images == 6 and m.codebook_size == 2**18
    assert m.psnr == pytest.approx(psnr(quantize_uint8(x), quantize_uint8(rec)).mean().item(), rel=1e-12)
    assert m.ssim == pytest.approx(ssim(quantize_uint8(x), quantize_uint8(rec)).mean().item(), rel=1e-12)
    assert math.isfinite(m.psnr) and 0 < m.psnr < 60 and -1 <= m.ssim <= 1
    assert m.lpips is None and m.rfid is None
    counter = CodebookCounter(2**18)
    counter.update(indices)
    assert torch.equal(m.counts, counter.counts)
    assert 1 <= m.used_codes == counter.used <= 6 * 8 * 8
    assert m.utilization == m.used_codes / 2**18
    assert 1 <= m.perplexity <= m.used_codes
    assert not tiny.training


def test_lpips_max_batches_and_plain_tensors(tiny, crops32):
    calls = []

    def fake_lpips(a, b):  # (B, 1, 1, 1), like lpips.LPIPS
        calls.append(a.shape[0])
        assert a.min() >= -1 and b.max() <= 1
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    gen = (crops32[i : i + 2] for i in range(0, 6, 2))  # no len(): the progress bar runs without a total
    m = evaluate_tokenizer(tiny, gen, lpips=fake_lpips, max_batches=2, progress=True)
    assert m.num_images == 4 and calls == [2, 2]
    rec, _ = _direct(tiny, crops32[:4])
    assert m.lpips == pytest.approx((crops32[:4] - rec).abs().mean(dim=(1, 2, 3)).mean().item(), rel=1e-6)


def test_factorized_indices_combine_to_the_full_index(tiny, crops32):
    fact = Tokenizer.from_preset("tiny", factorized_bits=(6, 12)).eval()
    fact.load_state_dict(tiny.state_dict())
    x = crops32[:4]
    _, full = _direct(tiny, x)
    _, groups = _direct(fact, x)
    assert isinstance(groups, tuple) and len(groups) == 2
    assert torch.equal(pack_groups(groups, (6, 12)), full)
    assert torch.equal(pack_groups(full, None), full)
    m_full = evaluate_tokenizer(tiny, [x], progress=False)
    m_fact = evaluate_tokenizer(fact, [x], progress=False)
    assert torch.equal(m_full.counts, m_fact.counts) and m_full.used_codes == m_fact.used_codes
    with pytest.raises(ValueError, match="2 index groups"):
        pack_groups(groups, None)


class _Halving(_Identity):
    def decode(self, q):
        return q / 2


class _MeanColor(nn.Module):
    """A cheap stand-in feature extractor, (B, 3, H, W) -> (B, 3), for the checks that do not need Inception."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_rfid_with_inception(tiny, crops32, inception):
    x = crops32[:2]
    m = evaluate_tokenizer(tiny, [x[:1], x[1:]], inception=inception, progress=False)  # streamed over 2 batches
    assert m.rfid is not None and math.isfinite(m.rfid) and m.rfid > 1e-3
    assert m.num_images == 2 and m.used_codes <= 2 * 8 * 8


def test_rfid_is_zero_for_perfect_reconstructions(crops32):
    x = crops32[:4]
    perfect = evaluate_tokenizer(_Identity(), [x[:2], x[2:]], inception=_MeanColor(), progress=False)
    assert perfect.rfid == pytest.approx(0.0, abs=1e-12)
    assert math.isinf(perfect.psnr) and perfect.ssim == pytest.approx(1.0)
    assert perfect.used_codes == 1 and perfect.codebook_size == 16 and perfect.perplexity == pytest.approx(1.0)
    # rec = x / 2: mean-colour features f / 2, so FD = |mu|^2 / 4 + tr(S) (1 + 1/4 - 2 sqrt(1/4)) = (|mu|^2 + tr S) / 4
    halved = evaluate_tokenizer(_Halving(), [x[:2], x[2:]], inception=_MeanColor(), progress=False)
    f = x.double().mean(dim=(2, 3)).numpy()
    want = (np.sum(f.mean(0) ** 2) + np.trace(np.cov(f, rowvar=False))) / 4
    assert halved.rfid == pytest.approx(want, rel=1e-6)  # features are float32
    with pytest.raises(ValueError, match="at least 2 images"):
        evaluate_tokenizer(_Identity(), [x[:1]], inception=_MeanColor(), progress=False)


def test_errors(tiny):
    with pytest.raises(ValueError, match="gave no images"):
        evaluate_tokenizer(tiny, [], progress=False)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        evaluate_tokenizer(tiny, [{"image": torch.zeros(1, 3, 8, 8)}], progress=False)
    with pytest.raises(ValueError, match="one value per image"):
        evaluate_tokenizer(tiny, [torch.zeros(2, 3, 16, 16)], lpips=lambda a, b: a.mean(), progress=False)
    tiny.train()
    with pytest.raises(ValueError):
        evaluate_tokenizer(tiny, [torch.zeros(2, 3, 16, 16)], lpips=lambda a, b: a.mean(), progress=False)
    assert tiny.training  # mode restored after an error
    tiny.eval()


def test_write_report(tiny, crops32, tmp_path):
    m = evaluate_tokenizer(tiny, [crops32[:2]], lpips=lambda a, b: torch.zeros(a.shape[0]), progress=False)
    paths = write_report(m, m.counts, tmp_path / "report")
    data = json.loads(paths["metrics"].read_text())
    assert data == pytest.approx(m.to_dict())
    assert set(data) == {"psnr", "ssim", "lpips", "rfid", "utilization", "used_codes", "codebook_size",
                         "perplexity", "num_images", "num_skipped"}  # fmt: skip
    assert data["rfid"] is None and data["lpips"] == 0.0 and data["num_images"] == 2
    with Image.open(paths["codebook_usage"]) as im:
        assert im.format == "PNG" and im.size[0] > 100
    # PSNR = inf (perfect reconstruction) is written as null plus a note, keeping the file strict JSON
    perfect = evaluate_tokenizer(_Identity(), [crops32[:2]], progress=False)
    paths = write_report(perfect, perfect.counts, tmp_path / "perfect")
    data = json.loads(paths["metrics"].read_text())
    assert data["psnr"] is None and data["non_finite"] == {"psnr": "inf"}
