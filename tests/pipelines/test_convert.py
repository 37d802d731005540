"""convert_checkpoint: one read of a checkpoint gives our format folder, with the stored training config when there
is one (the one conversion behind `magvit2 export` and its alias `convert`)."""

import torch

from magvit2 import Tokenizer, load_checkpoint
from magvit2.pipelines.convert import convert_checkpoint


def _official(tmp_path, **stored):
    torch.manual_seed(2)
    raw, ema = Tokenizer.from_preset("tiny"), Tokenizer.from_preset("tiny")
    sd = dict(raw.state_dict())
    sd.update({"model_ema." + k.replace(".", ""): v for k, v in ema.state_dict().items()})
    obj = {"state_dict": sd}
    if stored:
        obj["magvit2"] = {"kind": "tokenizer", "config": {"model": stored}}
    torch.save(obj, tmp_path / "t.ckpt")
    return tmp_path / "t.ckpt", raw, ema


def test_official_file_takes_the_ema_weights_and_the_shapes(tmp_path):
    path, raw, ema = _official(tmp_path)
    done = convert_checkpoint(path, tmp_path / "out")
    assert done.source == "ema" and not done.is_ar and done.transformer is None
    assert done.num_tensors == len(ema.state_dict()) and done.ignored == len(raw.state_dict())
    loaded = load_checkpoint(tmp_path / "out")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ema.state_dict().items())
    assert loaded.config.entropy_weight == Tokenizer.from_preset("tiny").config.entropy_weight


def test_stored_training_config_sets_what_shapes_cannot(tmp_path):
    path, _, _ = _official(tmp_path, preset="tiny", entropy_weight=0.25, factorized_bits=[6, 12])
    done = convert_checkpoint(path, tmp_path / "out", use_ema=False)
    assert done.source == "raw"
    config = load_checkpoint(tmp_path / "out").config
    assert config.entropy_weight == 0.25 and config.factorized_bits == (6, 12)
    done = convert_checkpoint(path, tmp_path / "plain", factorized_bits=None)  # the flag wins
    assert done.tokenizer.config.factorized_bits is None


def test_ar_checkpoint_class_names_go_into_the_model_folder(tmp_path):
    from magvit2.checkpoints.ar import load_ar_model
    from magvit2.nn import ARTransformer

    transformer = ARTransformer.from_preset("tiny")  # 10 class ids
    tokenizer = Tokenizer.from_preset("tiny", factorized_bits=(6, 12))
    sd = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    sd |= {f"first_stage_model.{k}": v for k, v in tokenizer.state_dict().items()}
    stored = {"kind": "ar", "config": {"model": {"preset": "tiny"}}, "class_names": ["cat", "rocket"]}
    torch.save({"state_dict": sd, "magvit2": stored}, tmp_path / "ar.ckpt")
    torch.save(
        {"state_dict": sd, "magvit2": {k: v for k, v in stored.items() if k != "class_names"}}, tmp_path / "old.ckpt"
    )
    assert convert_checkpoint(tmp_path / "ar.ckpt", tmp_path / "named").class_names == ["cat", "rocket"]
    assert load_ar_model(tmp_path / "named").class_names == ["cat", "rocket"]
    assert load_ar_model(tmp_path / "ar.ckpt").class_names == ["cat", "rocket"]
    assert convert_checkpoint(tmp_path / "old.ckpt", tmp_path / "old").class_names is None  # trained before names
    assert load_ar_model(tmp_path / "old").class_names is None


def _limit_file_size(limit):
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_export_that_cannot_write_leaves_no_half_model_folder(tmp_path):
    """The AR export writes the tokenizer (2.35 MB of weights), then the transformer (2.92 MB): under a 2.6 MB file
    size limit the second write fails, and the folder with only the tokenizer in it is removed."""
    import subprocess
    import sys

    from magvit2.nn import ARTransformer

    transformer = ARTransformer.from_preset("tiny")
    sd = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    sd |= {f"first_stage_model.{k}": v for k, v in Tokenizer.from_preset("tiny").state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "ar.ckpt")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "magvit2.cli", "export", str(tmp_path / "ar.ckpt"), str(out), "--n-head", "4",
            "--block-size", "64"]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, preexec_fn=_limit_file_size(2_600_000))
    assert run.returncode == 2, run.stderr
    assert run.stderr == (
        f"magvit2 export: error: [Errno 27] cannot write {out}/transformer.safetensors: File too large; nothing was "
        "left half-written\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar.ckpt"]
    run = subprocess.run(argv, capture_output=True, text=True)
    assert run.returncode == 0 and sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "transformer.json",
        "transformer.safetensors",
    ]
