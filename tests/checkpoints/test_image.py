"""Checkpoint loading: the official Lightning layout (raw + model_ema.* + loss.* keys), AR checkpoints, our
safetensors format, and clear errors for bad files -- nothing from a pickle is ever executed."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from magvit2 import Tokenizer, TokenizerConfig, load_checkpoint
from magvit2.checkpoints import infer_config
from magvit2.checkpoints.image import load_official
from magvit2.nn import CheckpointError
from magvit2.nn.image.tokenizer import PRESETS

TINY = PRESETS["tiny"]


def seeded(seed, **overrides):
    torch.manual_seed(seed)
    return Tokenizer.from_preset("tiny", **overrides)


def lightning_checkpoint(raw: Tokenizer, ema: Tokenizer | None) -> dict:
    """The official layout: raw weights, LitEma shadows `model_ema.<name without dots>`, loss.* and training state."""
    sd = dict(raw.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    sd["loss.discriminator.main.3.running_mean"] = torch.zeros(128)
    sd["loss.perceptual_loss.scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    if ema is not None:
        sd["model_ema.decay"] = torch.tensor(0.999)
        sd["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int)
        for name, value in ema.state_dict().items():
            sd["model_ema." + name.replace(".", "")] = value.clone()
        sd["model_ema.lossdiscriminatormain0weight"] = torch.randn(64, 3, 4, 4)
    return {
        "epoch": 269,
        "global_step": 1_350_000,
        "pytorch-lightning_version": "2.0.0",
        "state_dict": sd,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}],
        "callbacks": {"ModelCheckpoint": {"best_model_score": np.float64(1.17), "dirpath": "/ckpt"}},
        "lr_schedulers": [],
    }


def same_weights(model: Tokenizer, ref: Tokenizer) -> bool:
    a, b = model.state_dict(), ref.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lightning_checkpoint_prefers_ema(tmp_path):
    raw, ema = seeded(0), seeded(1)
    path = tmp_path / "imagenet_tiny.ckpt"
    torch.save(lightning_checkpoint(raw, ema), path)
    model = load_checkpoint(path)
    assert same_weights(model, ema) and not same_weights(model, raw)
    assert not model.training and model.config == TINY
    assert same_weights(load_checkpoint(path, use_ema=False), raw)
    loaded = load_official(path)
    assert loaded.source == "ema" and not loaded.is_ar
    assert "loss.discriminator.main.0.weight" in loaded.ignored and "encoder.conv_in.weight" in loaded.ignored
    assert "model_ema.lossdiscriminatormain0weight" in loaded.ignored


def test_checkpoint_without_ema_uses_raw(tmp_path):
    raw = seeded(2)
    torch.save(lightning_checkpoint(raw, None), tmp_path / "raw.ckpt")
    assert same_weights(load_checkpoint(tmp_path / "raw.ckpt"), raw)
    assert load_official(tmp_path / "raw.ckpt").source == "raw"


def test_partial_ema_is_an_error(tmp_path):
    ckpt = lightning_checkpoint(seeded(0), seeded(1))
    del ckpt["state_dict"]["model_ema.decoderconv_outbias"]
    torch.save(ckpt, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match="model_ema.decoderconv_outbias"):
        load_checkpoint(tmp_path / "partial.ckpt")
    assert load_official(tmp_path / "partial.ckpt", use_ema=False).source == "raw"


def test_ar_checkpoint_first_stage_model(tmp_path):
    tok = seeded(3)
    sd = {"first_stage_model." + k: v for k, v in tok.state_dict().items()}
    sd["transformer.pre_emb.weight"] = torch.randn(64, 32)
    sd["transformer.post_emb.weight"] = torch.randn(4096, 32)
    torch.save({"state_dict": sd}, tmp_path / "AR_256_B.ckpt")
    model = load_checkpoint(tmp_path / "AR_256_B.ckpt")
    assert same_weights(model, tok)
    assert model.config.factorized_bits == (6, 12)  # the AR configs' token split
    with torch.no_grad():
        _, (pre, post) = model.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert int(pre.max()) < 64
    assert load_checkpoint(tmp_path / "AR_256_B.ckpt", factorized_bits=None).config.factorized_bits is None


def test_plain_state_dict_file(tmp_path):
    tok = seeded(4)
    torch.save(tok.state_dict(), tmp_path / "weights.pth")
    assert same_weights(load_checkpoint(tmp_path / "weights.pth"), tok)


@pytest.mark.parametrize("preset", ["open-magvit2-256-L", "open-magvit2-128-L", "tiny"])
def test_infer_config_from_shapes(preset):
    with torch.device("meta"):
        sd = Tokenizer(PRESETS[preset]).state_dict()
    assert infer_config(sd) == PRESETS[preset]


def test_our_format_round_trip(tmp_path):
    tok = seeded(5, factorized_bits=(6, 12), entropy_weight=0.05)
    tok.save_pretrained(tmp_path / "model")
    assert sorted(os.listdir(tmp_path / "model")) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["format"] == "magvit2-tokenizer" and meta["ch_mult"] == [1, 1, 2] and meta["factorized_bits"] == [6, 12]
    for model in (
        Tokenizer.from_pretrained(tmp_path / "model"),
        load_checkpoint(tmp_path / "model"),
        load_checkpoint(tmp_path / "model" / "model.safetensors"),
    ):
        assert same_weights(model, tok) and model.config == tok.config
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "model" / "model.safetensors")) == set(tok.state_dict())


# --- errors -------------------------------------------------------------------------------------------------------


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    sd = dict(seeded(6).state_dict())
    del sd["encoder.down.0.block.0.conv2.weight"]
    sd["decoder.conv_out.weight"] = torch.zeros(3, 32, 5, 5)
    sd["encoder.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "bad.ckpt")
    msg = str(info.value)
    assert "missing keys: encoder.down.0.block.0.conv2.weight" in msg
    assert "unexpected keys: encoder.extra.weight" in msg
    assert "decoder.conv_out.weight (3, 32, 5, 5) (expected (3, 32, 3, 3))" in msg


def test_config_mismatch_lists_keys(tmp_path):
    seeded(7).save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["num_res_blocks"] = 2
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing keys: .*decoder\.mid_block\.1\.conv1\.weight"):
        Tokenizer.from_pretrained(tmp_path / "m")


def test_truncated_and_foreign_files(tmp_path):
    torch.save(lightning_checkpoint(seeded(0), None), tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt is not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.ckpt")
    (tmp_path / "notes.ckpt").write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "notes.ckpt")
    torch.save({"epoch": 3, "lr": [0.1]}, tmp_path / "nostate.ckpt")
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        load_checkpoint(tmp_path / "nostate.ckpt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.ckpt")
    seeded(0).save_pretrained(tmp_path / "m")
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "m")


class Payload:
    """Unpickling this runs `open(marker, 'w')`: a stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = lightning_checkpoint(seeded(0), None)
    ckpt["hyper_parameters"] = Payload(str(marker))
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"refusing to load .*(io|builtins)\.open"):
        load_checkpoint(tmp_path / "evil.ckpt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"state_dict": Payload(str(marker))}))
    with pytest.raises(CheckpointError, match=r"refusing to load .*(io|builtins)\.open"):
        load_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_training_metadata_globals_do_not_block_loading(tmp_path):
    """numpy scalars in Lightning callbacks are outside torch's allowlist; they load as inert placeholders."""
    ema = seeded(1)
    path = tmp_path / "meta.ckpt"
    torch.save(lightning_checkpoint(seeded(0), ema), path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path))  # the plain weights-only load would fail
    assert same_weights(load_checkpoint(path), ema)


def test_config_file_errors(tmp_path):
    seeded(0).save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "format": "other"}))
    with pytest.raises(CheckpointError, match="not a magvit2-tokenizer config"):
        Tokenizer.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "heads": 4}))
    with pytest.raises(CheckpointError, match="unknown field"):
        Tokenizer.from_pretrained(tmp_path / "m")
    assert TokenizerConfig.from_dict({k: v for k, v in cfg.items() if not k.startswith("format")}) == TINY
