"""AR training end to end: photos -> tokens (magvit2 encode) -> magvit2 train ar -> convert -> sample; the data's
class names (folders cat and rocket: 2 of the tiny model's 10 class ids) travel with the model."""

import csv
import json

import numpy as np
import pytest
import torch

from magvit2.cli import main
from magvit2.nn import Tokenizer
from magvit2.train.ar.config import load_ar_config
from magvit2.train.ar.fit import fit_ar
from magvit2.train.ar.module import ARModule, lr_factor


def test_official_schedule_hand_values():
    kw = dict(max_it=110, warmup_it=10, wp0=0.005, wpe=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.005)
    assert lr_factor(5, **kw) == pytest.approx(0.005 + 0.995 * 0.5)
    assert lr_factor(10, **kw) == 1.0 and lr_factor(14, **kw) == 1.0  # plateau for the first 5% after warm-up
    assert lr_factor(60, **kw) == pytest.approx(0.1 + 0.9 * (1 - 50 / 99) / 0.95)
    assert lr_factor(109, **kw) == pytest.approx(0.1)


def test_ar_presets_follow_the_official_recipes():
    b, big_l, xl = (load_ar_config(f"open-magvit2-ar-{s}") for s in ("B", "L", "XL"))
    assert (b.optim.lr, big_l.optim.lr, xl.optim.lr) == (3e-4, 3e-4, 2.4e-4)
    assert (b.data.batch_size, big_l.data.batch_size, xl.data.batch_size) == (24, 12, 8)
    assert (b.optim.warmup_epochs, xl.optim.warmup_epochs) == (6, 7)
    assert (b.trainer.max_epochs, xl.trainer.max_epochs) == (300, 350)
    assert b.optim.betas == (0.9, 0.95) and b.optim.weight_decay == 0.05 and b.optim.grad_clip == 1.0
    assert b.ar_config().dim == 1024 and xl.ar_config().spatial_n_layer == 48
    with pytest.raises(ValueError, match="valid keys"):
        load_ar_config("ar-tiny", ["model.dimm=3"])


@pytest.mark.parametrize("decay_norms", [False, True])
def test_weight_decay_only_on_matrices(tokens, tmp_path, decay_norms):
    from lightning.pytorch.callbacks import Callback

    seen = []

    class Groups(Callback):  # weight decay of each group as the optimizer steps, in a real run
        def on_before_optimizer_step(self, trainer, module, optimizer):
            seen.append([(g["weight_decay"], [p.dim() for p in g["params"]]) for g in optimizer.param_groups])

    overrides = [f"data.tokens={tokens / 'tokens'}", "trainer.max_steps=3", f"optim.decay_norms={decay_norms}"]
    fit_ar(load_ar_config("ar-tiny", overrides), tmp_path, progress=False, callbacks=[Groups()])
    (wd_matrices, dims_m), (wd_plain, dims_p) = seen[0]
    assert wd_matrices == 0.05 and wd_plain == 0.0
    assert all(d >= 2 for d in dims_m) and all(d == 1 for d in dims_p)
    assert len(dims_p) == 2 * (2 + 1) + 1  # the norms: two per block, one shared
    # the official quirk (decay_norms): from the second step on every group is decayed
    assert [step[1][0] for step in seen[1:]] == ([0.05, 0.05] if decay_norms else [0.0, 0.0])


def test_decay_norms_survives_a_resume_from_step_1(tokens, tmp_path):
    """The norms' weight decay starts with the second update, also in a run resumed from a step-1 checkpoint."""
    overrides = [f"data.tokens={tokens / 'tokens'}", "optim.decay_norms=true", "trainer.checkpoint_every_n_steps=1"]
    _, straight = fit_ar(load_ar_config("ar-tiny", [*overrides, "trainer.max_steps=3"]), tmp_path / "a", progress=False)
    fit_ar(load_ar_config("ar-tiny", [*overrides, "trainer.max_steps=1"]), tmp_path / "b", progress=False)
    config = load_ar_config("ar-tiny", [*overrides, "trainer.max_steps=3"])
    _, resumed = fit_ar(config, tmp_path / "b", resume="auto", progress=False)
    assert [g["weight_decay"] for g in resumed.optimizers().optimizer.param_groups] == [0.05, 0.05]
    a, b = straight.state_dict(), resumed.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope="module")
def trained(tokens, tmp_path_factory):
    """30 steps of `magvit2 train ar` on the two-class shards, exported to a model folder: (run, model)."""
    tmp = tmp_path_factory.mktemp("ar-run")
    out, model = tmp / "run", tmp / "model"
    args = ["train", "ar", "--config", "ar-tiny", "--data", str(tokens / "tokens"), "--out", str(out), "--max-steps",
            "30", "--no-progress", "--set", "data.batch_size=8", "--set", "trainer.log_every_n_steps=1",
            "--set", "trainer.checkpoint_every_n_steps=15"]  # fmt: skip
    assert main(args) == 0
    assert main(["export", str(out / "checkpoints" / "last.ckpt"), str(model)]) == 0
    return out, model


def test_train_ar_convert_and_sample(trained, tmp_path):
    out, model = trained
    with open(out / "logs" / "version_0" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert any(k.startswith("transformer.") for k in keys) and any(k.startswith("first_stage_model.") for k in keys)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step-000015.ckpt",
        "step-000030.ckpt",
    ]

    stored = json.loads((model / "transformer.json").read_text())
    assert (stored["n_head"], stored["block_size"]) == (4, 64)  # not in the weights: from the stored run config
    out_npz = str(tmp_path / "s.npz")
    assert main(["sample", "--model", str(model), "--classes", "0,1", "--per-class", "2", "--out", out_npz,
                 "--no-progress"]) == 0  # fmt: skip
    samples = np.load(tmp_path / "s.npz")
    assert samples["arr_0"].shape == (4, 32, 32, 3) and samples["arr_1"].tolist() == [0, 0, 1, 1]


def test_class_names_travel_from_the_shards_to_the_checkpoint_and_the_model(trained, tokens, capsys):
    out, model = trained
    assert json.loads((tokens / "tokens" / "tokens.json").read_text())["class_names"] == ["cat", "rocket"]
    ckpt = torch.load(out / "checkpoints" / "step-000015.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["magvit2"]["class_names"] == ["cat", "rocket"]
    assert json.loads((model / "transformer.json").read_text())["class_names"] == ["cat", "rocket"]
    assert main(["export", str(out / "checkpoints" / "last.ckpt"), str(model.parent / "again")]) == 0
    assert "trained on 2 of its 10 class ids: cat, rocket" in capsys.readouterr().out


def test_sample_takes_only_the_trained_classes_by_id_or_name(trained, tmp_path, capsys):
    _, model = trained
    base = ["sample", "--model", str(model), "--no-progress", "--out"]
    assert main([*base, str(tmp_path / "all.npz"), "--classes", "all"]) == 0
    assert np.load(tmp_path / "all.npz")["arr_1"].tolist() == [0, 1]  # not the 8 untrained ids of the 10
    assert main([*base, str(tmp_path / "named.npz"), "--classes", "rocket,cat,1", "--per-class", "2"]) == 0
    assert np.load(tmp_path / "named.npz")["arr_1"].tolist() == [1, 1, 0, 0, 1, 1]
    capsys.readouterr()
    for bad, says in (("dog", "unknown class 'dog'"), ("5", "ids must lie in [0, 2)")):
        assert main([*base, str(tmp_path / "x.npz"), "--classes", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--classes" in err and says in err and "0: cat, 1: rocket" in err


def test_train_ar_errors(tmp_path, capsys):
    assert main(["train", "ar", "--config", "ar-tiny", "--out", str(tmp_path)]) == 2
    assert "data.tokens is not set" in capsys.readouterr().err
    assert main(["train", "ar", "--config", "ar-tiny", "--data", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "not a token folder" in capsys.readouterr().err


def test_warmup_epochs_count_the_batches_of_an_epoch(tokens, tmp_path, monkeypatch):
    from magvit2.train.ar import fit, module

    seen = {}
    original = module.lr_factor

    def spy(it, **kw):
        seen.update(kw)
        return original(it, **kw)

    monkeypatch.setattr(module, "lr_factor", spy)
    config = load_ar_config("ar-tiny", [f"data.tokens={tokens / 'tokens'}", "trainer.max_steps=3",
                                        "optim.warmup_epochs=1.5", "data.batch_size=4"])  # fmt: skip
    fit.fit_ar(config, tmp_path, progress=False)
    assert seen["max_it"] == 3
    assert seen["warmup_it"] == 6  # 16 token grids / batch 4 = 4 batches per epoch, times 1.5 epochs


NO_DROPOUT = ["model.token_drop=0", "model.resid_dropout_p=0", "model.ffn_dropout_p=0", "model.class_dropout_prob=0"]


def _losses(run) -> list[float]:
    with open(run / "logs" / "version_0" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_tokens_on_the_fly_train_exactly_as_the_shards(tokens, tmp_path):
    # 32 x 32 images at data.size 32: the random crop is the whole image, so the frozen tokenizer must produce the
    # shards' tokens, in the same order with the same class ids: the same batches, the same loss sequence
    common = ["--config", "ar-tiny", "--max-steps", "4", "--no-progress", "--set", "data.batch_size=4",
              "--set", "trainer.log_every_n_steps=1", "--set", "data.size=32"]  # fmt: skip
    common += [a for o in NO_DROPOUT for a in ("--set", o)]
    shards, fly = tmp_path / "shards", tmp_path / "fly"
    assert main(["train", "ar", "--data", str(tokens / "tokens"), "--out", str(shards), *common]) == 0
    args = ["--data", str(tokens / "images"), "--tokenizer", str(tokens / "tokenizer"), "--out", str(fly)]
    assert main(["train", "ar", *args, *common]) == 0
    a, b = _losses(shards), _losses(fly)
    assert len(a) == len(b) == 4 and a == pytest.approx(b, rel=1e-6, abs=1e-6)
    ckpt = torch.load(fly / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["magvit2"]["class_names"] == ["cat", "rocket"]  # the image folders' names
    frozen = {k[len("first_stage_model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("first_stage")}
    original = Tokenizer.from_pretrained(tokens / "tokenizer").state_dict()
    assert frozen.keys() == original.keys() and all(torch.equal(frozen[k], original[k]) for k in frozen)


def test_tokenize_matches_the_tokenizer_split_and_checks_the_grid(tokens):
    from magvit2.data.images import list_images, load_image
    from magvit2.train.ar.fit import ar_tokenizer

    config = load_ar_config("ar-tiny")
    tokenizer = ar_tokenizer(tokens / "tokenizer", (6, 12))
    module = ARModule(config, tokenizer).train()
    assert module.transformer.training and not module.first_stage_model.training  # frozen stays in eval mode
    images = torch.stack([load_image(p, size=32) for p in list_images(tokens / "images")[:3]])
    pre, post = module.tokenize(images)
    full = Tokenizer.from_pretrained(tokens / "tokenizer").encode(images).indices.flatten(1)
    assert pre.shape == post.shape == (3, 64) and torch.equal(pre + (post << 6), full)
    with pytest.raises(ValueError, match="block_size is 64"):
        module.tokenize(torch.zeros(1, 3, 48, 48))


def test_on_the_fly_errors(tokens, tmp_path, capsys):
    from magvit2.train.ar.config import ARDataConfig

    with pytest.raises(ValueError, match="need data.tokenizer"):
        ARDataConfig(images=str(tokens / "images")).check_source()
    with pytest.raises(ValueError, match="both set"):
        ARDataConfig(images="a", tokens="b", tokenizer="c").check_source()
    with pytest.raises(ValueError, match="data.size must be a positive int"):
        ARDataConfig(size=0)
    with pytest.raises(ValueError, match="the data has 11 classes .* model.class_num is 10"):
        ARModule(load_ar_config("ar-tiny"), class_names=[str(i) for i in range(11)])
    args = ["train", "ar", "--config", "ar-tiny", "--data", str(tokens / "images"), "--out", str(tmp_path)]
    assert main([*args, "--tokenizer", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
