"""Official AR checkpoints (transformer.* + first_stage_model.*) into an ARTransformer and its Tokenizer."""

import pytest
import torch

from magvit2.checkpoints.ar import infer_ar_config, load_ar_checkpoint
from magvit2.nn import CheckpointError, Tokenizer
from magvit2.nn.ar.transformer import AR_PRESETS, ARConfig, ARTransformer


def _meta(name):
    with torch.device("meta"):
        return ARTransformer.from_preset(name)


def _official_ar_file(tmp_path, seed=0):
    """A Lightning-style AR checkpoint: transformer.* + first_stage_model.* (raw and EMA tokenizer weights)."""
    torch.manual_seed(seed)
    transformer = ARTransformer.from_preset("tiny")
    for h in transformer.head:
        torch.nn.init.normal_(h.weight, 0, 0.02)
    tokenizer = Tokenizer.from_preset("tiny", factorized_bits=(6, 12))
    sd = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    sd |= {f"first_stage_model.{k}": v for k, v in tokenizer.state_dict().items()}
    sd |= {f"first_stage_model.model_ema.{k.replace('.', '')}": v * 0 for k, v in tokenizer.state_dict().items()}
    path = tmp_path / "AR_tiny.ckpt"
    torch.save({"state_dict": sd, "global_step": 7}, path)
    return path, transformer.eval(), tokenizer.eval()


def test_load_official_ar_checkpoint(tmp_path):
    path, transformer, tokenizer = _official_ar_file(tmp_path)
    loaded, tok = load_ar_checkpoint(path, n_head=4, block_size=64)
    assert loaded.config == transformer.config
    for k, v in transformer.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    for k, v in tokenizer.state_dict().items():
        assert torch.equal(tok.state_dict()[k], v), k  # raw weights, not the (zeroed) EMA copies
    assert tok.config.factorized_bits == (6, 12)
    pre, post, cls = torch.randint(0, 64, (1, 64)), torch.randint(0, 4096, (1, 64)), torch.tensor([3])
    torch.testing.assert_close(loaded(pre, post, cls).post, transformer(pre, post, cls).post)


def test_infer_ar_config_for_the_released_widths():
    sd = _meta("open-magvit2-ar-L").state_dict()
    assert infer_ar_config(sd) == AR_PRESETS["open-magvit2-ar-L"]


def test_ar_checkpoint_errors(tmp_path):
    path, transformer, _ = _official_ar_file(tmp_path)
    sd = torch.load(path, weights_only=True)["state_dict"]
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("transformer.")}}, tmp_path / "t.ckpt")
    with pytest.raises(CheckpointError, match="no transformer"):
        load_ar_checkpoint(tmp_path / "t.ckpt")
    bad = dict(sd)
    bad["transformer.norm.weight"] = torch.zeros(3)
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"mis-shaped: norm.weight \(3,\)"):
        load_ar_checkpoint(tmp_path / "bad.ckpt", n_head=4, block_size=64)


def test_class_names_in_the_model_folder_and_their_errors(tmp_path):
    import json

    from magvit2.checkpoints.ar import load_ar_model, save_ar_pretrained

    transformer = ARTransformer.from_preset("tiny")  # 10 class ids
    Tokenizer.from_preset("tiny", factorized_bits=(6, 12)).save_pretrained(tmp_path)
    save_ar_pretrained(transformer, tmp_path, class_names=["0", "1", "2"])
    assert json.loads((tmp_path / "transformer.json").read_text())["class_names"] == ["0", "1", "2"]
    model = load_ar_model(tmp_path)
    assert model.class_names == ["0", "1", "2"] and model.transformer.config == transformer.config
    with pytest.raises(CheckpointError, match="11 class names for a model of 10 classes"):
        save_ar_pretrained(transformer, tmp_path, class_names=[str(i) for i in range(11)])
    meta = json.loads((tmp_path / "transformer.json").read_text())
    (tmp_path / "transformer.json").write_text(json.dumps({**meta, "class_names": [1, 2]}))
    with pytest.raises(CheckpointError, match="class_names must be a list of strings"):
        load_ar_model(tmp_path)


def test_the_head_count_of_a_width_that_is_not_released_is_never_guessed(tmp_path, capsys):
    """dim 256 with 8 heads: the old guess (dim // 64 = 4 heads) loaded it without a word, and generated other
    tokens."""
    from magvit2.cli import main
    from magvit2.nn.ar import generate

    config = ARConfig(dim=256, n_head=8, spatial_n_layer=1, factorized_n_layer=1, block_size=64, class_num=10)
    torch.manual_seed(0)
    transformer = ARTransformer(config).eval()
    for h in transformer.head:
        torch.nn.init.normal_(h.weight, 0, 0.5)
    sd = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    sd |= {
        f"first_stage_model.{k}": v
        for k, v in Tokenizer.from_preset("tiny", factorized_bits=(6, 12)).state_dict().items()
    }
    path = tmp_path / "AR_256.ckpt"
    torch.save({"state_dict": sd}, path)
    message = (
        r"AR_256.ckpt: the AR transformer's width \(dim=256, 1\+1 layers\) is not a released one \(AR-B/L/XL\) and its "
        r"head count is not in the weights: pass --n-head \(n_head=\)"
    )
    with pytest.raises(CheckpointError, match=message):
        load_ar_checkpoint(path, block_size=64)
    loaded, _ = load_ar_checkpoint(path, n_head=8, block_size=64)
    assert loaded.config == config
    cls = torch.tensor([1, 2])
    want, got = generate(transformer, cls, seed=0, cfg=(1.0, 1.0)), generate(loaded, cls, seed=0, cfg=(1.0, 1.0))
    assert torch.equal(want.pre, got.pre) and torch.equal(want.post, got.post)

    for argv in (
        ["export", str(path), str(tmp_path / "out"), "--block-size", "64"],
        ["sample", "--model", str(path), "--classes", "1", "--out", str(tmp_path / "s.png"), "--no-progress"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"magvit2 {argv[0]}: error: ") and "pass --n-head" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.png").exists()
    assert main(["export", str(path), str(tmp_path / "out"), "--block-size", "64", "--n-head", "8"]) == 0
    assert load_ar_checkpoint(tmp_path / "out")[0].config == config


def test_a_released_width_with_other_layers_needs_the_head_count():
    sd = {k: v for k, v in _meta("open-magvit2-ar-B").state_dict().items() if not k.startswith("spatial_blocks.23.")}
    with pytest.raises(CheckpointError, match=r"width \(dim=1024, 23\+2 layers\) is not a released one"):
        infer_ar_config(sd)
    assert infer_ar_config(sd, n_head=8).n_head == 8
    assert infer_ar_config(_meta("open-magvit2-ar-XL").state_dict()) == AR_PRESETS["open-magvit2-ar-XL"]
