"""`magvit2 eval tokenizer` over a folder with unreadable files: metrics over the readable images only, the others
skipped, counted and named."""

import json
import shutil

import pytest
import torch

from magvit2.cli import main
from magvit2.nn import Tokenizer
from tests.data.hostile import truncate, write_bad_headers, write_photos


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-skip")
    write_photos(root / "clean", ["a.png", "c.png", "e.png"])
    shutil.copytree(root / "clean", root / "messy")
    write_photos(root / "messy", ["b.png", "d.png"], seed=1)
    truncate(root / "messy" / "b.png")
    truncate(root / "messy" / "d.png")
    write_bad_headers(root / "messy")
    torch.manual_seed(0)
    Tokenizer.from_preset("tiny").save_pretrained(root / "tokenizer")
    return root


def _eval(root, data, capsys):
    out = root / f"out-{data}"
    argv = [
        "eval",
        "tokenizer",
        "--model",
        str(root / "tokenizer"),
        "--data",
        str(root / data),
        "--out",
        str(out),
        "--size",
        "32",
        "--batch-size",
        "1",
        "--no-progress",
    ]  # fmt: skip  (batches alike: equal sums)
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text()), capsys.readouterr().out


def test_eval_counts_only_readable_images(folders, capsys):
    clean, _ = _eval(folders, "clean", capsys)
    messy, printed = _eval(folders, "messy", capsys)
    assert messy["num_images"] == 3 and messy["num_skipped"] == 7  # before: num_images 5 (b and d replaced)
    assert clean["num_skipped"] == 0
    for key in ("psnr", "ssim", "used_codes", "perplexity"):  # the same three images, the same metrics
        assert messy[key] == pytest.approx(clean[key], rel=1e-6)
    assert "evaluated 3 images, 7 skipped (unreadable): " in printed
    assert "messy/b.png: OSError: image file is truncated" in printed and "messy/bad.tif" in printed
