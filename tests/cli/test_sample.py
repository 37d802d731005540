"""`magvit2 convert` of an AR checkpoint and `magvit2 sample` to an ADM-layout .npz and a PNG contact sheet; an
official checkpoint stores no class names: every id is a class."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from magvit2.checkpoints.ar import load_ar_checkpoint, load_ar_model
from magvit2.cli import main
from magvit2.data.images import SHEET_GAP
from magvit2.nn import ARConfig, ARTransformer, Tokenizer
from magvit2.nn.ar import generate

CONFIG = ARConfig(dim=128, n_head=2, spatial_n_layer=2, factorized_n_layer=1, block_size=64, class_num=10)


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory):
    """An official-layout AR checkpoint (transformer.* + first_stage_model.*) converted to our format."""
    tmp = tmp_path_factory.mktemp("ar")
    torch.manual_seed(0)
    transformer = ARTransformer(CONFIG)
    for h in transformer.head:
        torch.nn.init.normal_(h.weight, 0, 0.5)
    tokenizer = Tokenizer.from_preset("tiny", factorized_bits=(6, 12))
    sd = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    sd |= {f"first_stage_model.{k}": v for k, v in tokenizer.state_dict().items()}
    torch.save({"state_dict": sd}, tmp / "AR.ckpt")
    assert main(["convert", str(tmp / "AR.ckpt"), str(tmp / "model"), "--block-size", "64", "--n-head", "2"]) == 0
    return tmp / "model", transformer.eval(), tokenizer.eval()


def test_convert_writes_transformer_and_tokenizer(ar_dir):
    model_dir, transformer, tokenizer = ar_dir
    assert (model_dir / "transformer.json").is_file() and (model_dir / "config.json").is_file()
    loaded, tok = load_ar_checkpoint(model_dir)
    assert loaded.config == CONFIG
    for k, v in transformer.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert tok.config.factorized_bits == (6, 12)
    assert "class_names" not in json.loads((model_dir / "transformer.json").read_text())
    assert load_ar_model(model_dir).class_names is None
    assert load_ar_model(model_dir.parent / "AR.ckpt", n_head=2).class_names is None


def test_sample_npz_is_adm_layout_and_reproducible(ar_dir, tmp_path):
    model_dir, transformer, tokenizer = ar_dir
    args = ["sample", "--model", str(model_dir), "--classes", "1,2", "--per-class", "2", "--seed", "3",
            "--batch-size", "3", "--cfg", "1.5,1.5", "--top-p", "0.9", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a.npz")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["arr_0"].shape == (4, 32, 32, 3) and a["arr_0"].dtype == np.uint8
    assert a["arr_1"].tolist() == [1, 1, 2, 2]
    assert np.array_equal(a["arr_0"], b["arr_0"])
    assert not np.array_equal(a["arr_0"][0], a["arr_0"][1])  # two samples of class 1 differ
    # the first batch is generate(seed * 1000003) decoded by the tokenizer
    loaded, tok = load_ar_checkpoint(model_dir)
    tokens = generate(loaded, torch.tensor([1, 1, 2]), seed=3 * 1_000_003, cfg=(1.5, 1.5), top_p=(0.9, 0.9))
    rec = tok.decode_indices((tokens.pre.view(-1, 8, 8), tokens.post.view(-1, 8, 8)))
    # the official sampler's conversion (sample.py chw_to_pillow): float32 numpy, clipped, truncated by astype
    x = rec.detach().permute(0, 2, 3, 1).numpy()
    want = (255 * ((x + 1.0) / 2.0)).clip(0, 255).astype(np.uint8)
    assert np.array_equal(a["arr_0"][:3], want)


def test_sample_png_is_a_contact_sheet_of_64_px_tiles_and_errors(ar_dir, tmp_path, capsys):
    model_dir, _, _ = ar_dir
    out = tmp_path / "grid.png"
    args = ["sample", "--model", str(model_dir), "--classes", "0,9", "--per-class", "3", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(tmp_path / "same.npz")]) == 0
    samples = np.load(tmp_path / "same.npz")["arr_0"]  # (6, 32, 32, 3)
    with Image.open(out) as img:
        sheet = np.asarray(img.convert("RGB"))
    tile = 64  # 32-pixel samples enlarged x2
    margin = sheet.shape[1] - (3 * tile + 4 * SHEET_GAP)  # the row labels "0" and "9"
    assert sheet.shape[0] == 2 * tile + 3 * SHEET_GAP and 0 < margin < 20  # one row per class
    for i, sample in enumerate(samples):
        r, c = divmod(i, 3)
        top, left = SHEET_GAP + r * (tile + SHEET_GAP), margin + SHEET_GAP + c * (tile + SHEET_GAP)
        assert np.array_equal(sheet[top : top + tile, left : left + tile], sample.repeat(2, 0).repeat(2, 1))
    capsys.readouterr()
    assert main(["sample", "--model", str(model_dir), "--classes", "10", "--out", str(out), "--no-progress"]) == 2
    assert "ids must lie in [0, 10)" in capsys.readouterr().err
    assert main(["sample", "--model", str(model_dir), "--classes", "1", "--out", str(tmp_path / "x.gif")]) == 2
    assert "must end in .npz" in capsys.readouterr().err
    assert main(["sample", "--model", str(tmp_path), "--classes", "1", "--out", str(out)]) == 2
    assert "transformer.json" in capsys.readouterr().err


def test_classes_all_of_a_model_without_class_names_is_every_id(ar_dir, tmp_path, capsys):
    model_dir, _, _ = ar_dir
    out = tmp_path / "all.npz"
    assert main(["sample", "--model", str(model_dir), "--classes", "all", "--out", str(out), "--no-progress"]) == 0
    assert np.load(out)["arr_1"].tolist() == list(range(10))
    assert main(["sample", "--model", str(model_dir), "--classes", "cat", "--out", str(out), "--no-progress"]) == 2
    assert "expected comma-separated class ids or 'all'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--per-class", "0"), ("--per-class", "-1"), ("--batch-size", "0")])
def test_no_images_asked_is_a_one_line_error(ar_dir, tmp_path, flag, value):
    """In a child process (a zero-row generation used to end it by SIGFPE): exit 2, one line naming the flag."""
    model_dir, _, _ = ar_dir
    out = tmp_path / "none.npz"
    argv = ["sample", "--model", str(model_dir), "--classes", "1,2", "--out", str(out), "--no-progress", flag, value]
    child = subprocess.run([sys.executable, "-m", "magvit2.cli", *argv], capture_output=True, text=True, timeout=300)
    assert child.returncode == 2, f"rc {child.returncode}: {child.stderr[-2000:]}"
    assert child.stderr.strip() == f"magvit2 sample: error: {flag} must be a positive integer, got {value}"
    assert not out.exists()
