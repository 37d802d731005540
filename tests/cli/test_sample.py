"""`magvit2 convert` of an AR checkpoint and `magvit2 sample` to an ADM-layout .npz and a PNG grid."""

import numpy as np
import pytest
import torch
from PIL import Image

from magvit2.checkpoints.ar import load_ar_checkpoint
from magvit2.cli import main
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
    assert main(["convert", str(tmp / "AR.ckpt"), str(tmp / "model"), "--block-size", "64"]) == 0
    return tmp / "model", transformer.eval(), tokenizer.eval()


def test_convert_writes_transformer_and_tokenizer(ar_dir):
    model_dir, transformer, tokenizer = ar_dir
    assert (model_dir / "transformer.json").is_file() and (model_dir / "config.json").is_file()
    loaded, tok = load_ar_checkpoint(model_dir)
    assert loaded.config == CONFIG
    for k, v in transformer.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert tok.config.factorized_bits == (6, 12)


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
    rec = tok.decode_indices((tokens.pre.view(-1, 8, 8), tokens.post.view(-1, 8, 8))).clamp(-1, 1)
    want = ((rec + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(a["arr_0"][:3], want)


def test_sample_png_grid_and_errors(ar_dir, tmp_path, capsys):
    model_dir, _, _ = ar_dir
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", str(model_dir), "--classes", "0,9", "--per-class", "3", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    with Image.open(out) as img:
        assert img.size == (3 * 32, 2 * 32)  # one row per class
    capsys.readouterr()
    assert main(["sample", "--model", str(model_dir), "--classes", "10", "--out", str(out), "--no-progress"]) == 2
    assert "ids must lie in [0, 10)" in capsys.readouterr().err
    assert main(["sample", "--model", str(model_dir), "--classes", "1", "--out", str(tmp_path / "x.gif")]) == 2
    assert "must end in .npz" in capsys.readouterr().err
    assert main(["sample", "--model", str(tmp_path), "--classes", "1", "--out", str(out)]) == 2
    assert "transformer.json" in capsys.readouterr().err
