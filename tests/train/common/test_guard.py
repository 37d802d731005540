"""A non-finite loss skips the whole update (generator, discriminator, EMA; the AR optimizer), is logged, and too
many in a row stop the run with a message. Real trainers, real data with NaN batches."""

import csv

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from magvit2.demos.photos_data import PhotoDataModule
from magvit2.train.ar.config import load_ar_config
from magvit2.train.ar.fit import fit_ar
from magvit2.train.common.guard import NonFiniteLossError
from magvit2.train.tokenizer.config import load_config
from magvit2.train.tokenizer.fit import fit_tokenizer


class Poisoned(Dataset):
    """Crops whose batches listed in `nan_batches` hold 3e38 everywhere: finite input (NaN input is refused by the
    tokenizer's check) that overflows to inf inside the network, the blow-up the guard is for."""

    def __init__(self, base, batch_size, nan_batches):
        self.base, self.batch_size, self.nan_batches = base, batch_size, set(nan_batches)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x = self.base[i]
        return torch.full_like(x, 3e38) if i // self.batch_size in self.nan_batches else x


class PoisonedPhotos(PhotoDataModule):
    def __init__(self, config, nan_batches):
        super().__init__(config, train_crops=32, val_crops=4)
        self.nan_batches = nan_batches

    def setup(self, stage=None):
        super().setup(stage)
        self.train_set = Poisoned(self.train_set, self.config.batch_size, self.nan_batches)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=4)


class Snapshots(Callback):
    """Weights, EMA and optimizer state after every training batch."""

    def __init__(self):
        self.after = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        opts = [o.optimizer.state_dict()["state"] for o in module.optimizers()]
        self.after.append(
            {
                "params": {k: v.detach().clone() for k, v in module.named_parameters()},
                "ema": {k: v.clone() for k, v in module.model_ema.state_dict().items()},
                "loss_state": {k: v.clone() for k, v in module.loss.state_dict().items()},
                "adam_steps": [sorted({float(s["step"]) for s in o.values()}) for o in opts],
            }
        )


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tokenizer_run(tmp_path, nan_batches, limit, steps):
    overrides = [f"trainer.max_steps={steps}", "data.batch_size=2", "loss.disc_start=0",
                 "trainer.val_every_n_steps=100", "trainer.image_every_n_steps=0", "trainer.log_every_n_steps=1",
                 "trainer.checkpoint_every_n_steps=100", f"trainer.max_nonfinite_skips={limit}"]  # fmt: skip
    config = load_config("tiny", overrides)
    snaps = Snapshots()
    trainer, module = fit_tokenizer(
        config, tmp_path, datamodule=PoisonedPhotos(config.data, nan_batches), progress=False, callbacks=[snaps]
    )
    return trainer, module, snaps.after


def test_tokenizer_skips_both_updates_and_the_ema_on_a_nan_batch(tmp_path):
    with pytest.warns(UserWarning, match="non-finite loss .* at step 1: update skipped"):
        trainer, module, after = _tokenizer_run(tmp_path, nan_batches=[1, 2], limit=2, steps=3)
    assert len(after) == 5 and module.batch_step == 3  # 5 batches for 3 updates
    assert _same(after[1]["params"], after[0]["params"]) and _same(after[2]["params"], after[0]["params"])
    assert _same(after[2]["ema"], after[0]["ema"]) and not _same(after[3]["ema"], after[2]["ema"])
    assert _same(after[2]["loss_state"], after[0]["loss_state"])  # LeCAM EMAs, D BatchNorm statistics
    assert not _same(after[3]["params"], after[2]["params"])
    assert [a["adam_steps"] for a in after] == [
        [[1.0], [1.0]],
        [[1.0], [1.0]],
        [[1.0], [1.0]],
        [[2.0], [2.0]],
        [[3.0], [3.0]],
    ]  # fmt: skip  (G and D both skipped)
    assert all(torch.isfinite(v).all() for v in after[-1]["params"].values())
    with open(tmp_path / "logs" / "version_0" / "metrics.csv") as f:
        skips = [float(r["train/nonfinite_skips"]) for r in csv.DictReader(f) if r.get("train/nonfinite_skips")]
    assert skips == [0.0, 1.0, 2.0, 2.0, 2.0]  # a running total, every batch


def test_config_checks(tmp_path):
    with pytest.raises(ValueError, match="trainer.val_every_n_steps must be a positive int or null, got 0"):
        load_config("tiny", ["trainer.val_every_n_steps=0"])
    with pytest.raises(ValueError, match="trainer.max_nonfinite_skips must be an int >= 0, got -1"):
        load_config("tiny", ["trainer.max_nonfinite_skips=-1"])


def test_tokenizer_stops_after_too_many_in_a_row(tmp_path):
    with pytest.warns(UserWarning), pytest.raises(NonFiniteLossError, match="2 in a row, more than .*=1"):
        _tokenizer_run(tmp_path, nan_batches=[1, 2, 3], limit=1, steps=4)


def test_ar_skips_and_stops(tokens, tmp_path):
    class Poison(Callback):  # an inf weight from step 2 on: every later loss is NaN
        def __init__(self):
            self.params = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 2:
                with torch.no_grad():
                    module.transformer.head[1].weight[0, 0] = float("inf")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.params.append({k: v.detach().clone() for k, v in module.transformer.named_parameters()})

    poison = Poison()
    config = load_ar_config("ar-tiny", [f"data.tokens={tokens / 'tokens'}", "trainer.max_steps=10",
                                        "data.batch_size=4", "trainer.max_nonfinite_skips=2"])  # fmt: skip
    with pytest.warns(UserWarning), pytest.raises(NonFiniteLossError, match="3 in a row"):
        fit_ar(config, tmp_path, progress=False, callbacks=[poison])
    assert len(poison.params) == 4  # batches 0, 1 updated; 2, 3 skipped; 4 raised
    assert not _same(poison.params[1], poison.params[0])
    assert _same(poison.params[3], poison.params[2])  # a skipped step applies no (stale) gradient
    assert not torch.isfinite(poison.params[2]["head.1.weight"]).all()


def test_fp16_gradient_overflow_is_handled_by_the_scaler(tmp_path):
    """16-mixed on a CPU runs fp16 autocast with a real GradScaler (Lightning alone would switch to bf16). Started
    at a loss scale of 2^26, the scaled gradients overflow: the scaler skips those updates and shrinks the scale
    until they fit; training then moves on with finite weights."""

    class Scale(Callback):
        def __init__(self):
            self.rows = []

        def on_train_start(self, trainer, module):
            trainer.precision_plugin.scaler._init_scale = 2.0**26  # before its first use

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.before = {k: v.detach().clone() for k, v in module.tokenizer.named_parameters()}

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = dict(module.tokenizer.named_parameters())
            moved = any(not torch.equal(now[k], v) for k, v in self.before.items())
            self.rows.append((float(trainer.precision_plugin.scaler.get_scale()), moved))

    overrides = ["trainer.max_steps=8", "trainer.precision=16-mixed", "trainer.accelerator=cpu", "data.batch_size=2",
                 "loss.disc_start=0", "trainer.val_every_n_steps=100", "trainer.image_every_n_steps=0"]  # fmt: skip
    config = load_config("tiny", overrides)
    scale = Scale()
    data = PhotoDataModule(config.data, train_crops=32, val_crops=2)
    trainer, module = fit_tokenizer(config, tmp_path, datamodule=data, progress=False, callbacks=[scale])
    assert type(trainer.precision_plugin).__name__ == "MixedPrecision" and trainer.precision_plugin.scaler is not None
    scales, moved = zip(*scale.rows, strict=True)
    assert not moved[0] and scales[0] < 2.0**26  # overflow: update skipped, scale cut
    assert any(moved) and scales[-1] < scales[0]  # then it fits and the weights move
    assert all(torch.isfinite(p).all() for p in module.tokenizer.parameters())
