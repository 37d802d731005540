"""`magvit2 demo` (digits), shortened: every artifact is written and parses, the metrics are in range, samples have
the right shape and classes, the same seed gives the same samples; and the classifier that scores the samples
recognises real held-out digits (so the class-consistency accuracy means something)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from magvit2.cli import main
from magvit2.data.tokens import TokenShards
from magvit2.demos.digits import SampleSettings, run_digits_demo
from magvit2.demos.digits_data import DigitClassifier, class_report, load_digits, split_digits

SHORT = ["--tokenizer-steps", "8", "--ar-steps", "8", "--per-class", "3", "--no-progress"]


def test_digits_split_and_classifier_on_real_heldout_digits():
    digits = load_digits(16)
    assert digits.images.shape == (1797, 3, 16, 16) and digits.labels.tolist()[:3] == [0, 1, 2]
    assert digits.images.min() >= -1 and digits.images.max() <= 1
    split = split_digits(digits, seed=0)
    assert (len(split.train.labels), len(split.heldout.labels)) == (1437, 360)
    share = torch.bincount(split.heldout.labels) - torch.bincount(digits.labels) * 0.2
    assert share.abs().max() <= 1  # stratified: every class keeps its 20% (up to rounding)
    pairs = {tuple(x.flatten().tolist()) for x in split.heldout.images[:50]}
    assert not any(tuple(x.flatten().tolist()) in pairs for x in split.train.images)  # no held-out digit trained on
    classifier = DigitClassifier().fit(split.train)
    assert classifier.accuracy(split.heldout.images, split.heldout.labels) >= 0.95
    noise = torch.rand(100, 3, 16, 16) * 2 - 1  # random images land on no particular class
    assert np.bincount(classifier.predict(noise), minlength=10).max() < 100


def test_class_report_hand_values():
    report = class_report(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]))
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class_accuracy"][:3] == [0.5, 0.5, 1.0] and report["per_class_accuracy"][3] == 0.0
    assert report["confusion"][0][:3] == [1, 0, 1] and np.sum(report["confusion"]) == 6


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "demo-out"
    threads = torch.get_num_threads()
    code = main(["demo", "--out", str(out), *SHORT])
    assert torch.get_num_threads() == threads  # the demo's one thread is not left behind
    return code, out


def test_digits_demo_writes_everything(demo_run, capsys):
    code, out = demo_run
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["class_consistency_accuracy"] <= 1 and metrics["chance"] == 0.1
    assert len(metrics["per_class_accuracy"]) == 10 and all(0 <= a <= 1 for a in metrics["per_class_accuracy"])
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (10, 10) and (confusion.sum(1) == 3).all()
    assert np.trace(confusion) / 30 == pytest.approx(metrics["class_consistency_accuracy"])
    assert metrics["classifier"]["real_heldout_accuracy"] >= 0.95
    assert 0 <= metrics["classifier"]["reconstruction_heldout_accuracy"] <= 1
    assert metrics["tokenizer"]["steps"] == 8 and metrics["ar"]["steps"] == 8
    assert metrics["tokenizer"]["token_grid"] == [4, 4] and metrics["tokenizer"]["codebook_size"] == 1024
    assert np.isfinite(metrics["ar"]["heldout_loss"]) and metrics["tokenizer"]["heldout_psnr"] > 5
    phases = ("data_and_classifier", "tokenizer_training", "encode", "ar_training", "sampling", "scoring_and_plots")
    assert all(metrics["timings_s"][p] >= 0 for p in phases)
    assert metrics["timings_s"]["total"] >= sum(metrics["timings_s"][p] for p in phases) - 0.1
    assert metrics["digits"] == {"image_size": 16, "train": 1437, "heldout": 360}

    samples = np.load(out / "samples.npz")
    assert samples["arr_0"].shape == (30, 16, 16, 3) and samples["arr_0"].dtype == np.uint8
    assert samples["arr_1"].tolist() == [c for c in range(10) for _ in range(3)]
    # one row per class / 2 held-out digits per class over reconstructions: 16 px enlarged to 64 px tiles, 4 px gaps,
    # row labels at the left
    for name, (per_row, rows) in (("samples.png", (3, 10)), ("reconstructions.png", (20, 2))):
        with Image.open(out / name) as img:
            assert img.height == rows * 64 + (rows + 1) * 4, name
            assert per_row * 64 + (per_row + 1) * 4 < img.width < per_row * 64 + (per_row + 1) * 4 + 80, name
    with Image.open(out / "curves.png") as img:
        assert img.width > 300 and img.height > 200

    tokens = TokenShards(out / "tokens")
    assert len(tokens) == 1437 and tokens.load_all().shape == (1437, 4, 4) and int(tokens.load_all().max()) < 1024
    assert sorted({s.split("/")[0] for s in tokens.sources}) == [str(c) for c in range(10)]
    assert tokens.class_names == [str(c) for c in range(10)]  # the digits name their classes
    assert (out / "tokenizer" / "config.json").is_file() and (out / "ar-run" / "checkpoints" / "last.ckpt").is_file()


def test_digits_demo_is_reproducible(demo_run, tmp_path):
    _, out = demo_run
    again = run_digits_demo(
        tmp_path / "again", tokenizer_steps=8, ar_steps=8, sampling=SampleSettings(per_class=3), progress=False
    )
    first = json.loads((out / "metrics.json").read_text())
    assert again["ar"]["heldout_loss"] == first["ar"]["heldout_loss"]
    assert again["confusion"] == first["confusion"]
    samples, repeat = np.load(out / "samples.npz"), np.load(tmp_path / "again" / "samples.npz")
    assert np.array_equal(samples["arr_0"], repeat["arr_0"])


def test_digits_demo_argument_errors(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "5"]) == 2
    assert "--tokenizer-steps" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--per-class", "0"]) == 2
    assert "per_class must be >= 1" in capsys.readouterr().err
