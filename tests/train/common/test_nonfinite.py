"""A finite loss with non-finite gradients skips the update like a non-finite loss (tokenizer: both optimizers and
the EMA; AR: before grad clipping would spread NaN); no checkpoint is ever written with non-finite values; the stop
is one line on the command line, and what it says is true."""

import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from magvit2.demos.photos_data import PhotoDataModule
from magvit2.train.ar.config import load_ar_config
from magvit2.train.ar.fit import fit_ar
from magvit2.train.common.guard import NonFiniteLossError
from magvit2.train.tokenizer.config import load_config
from magvit2.train.tokenizer.fit import fit_tokenizer

CLI = "import sys; from magvit2.cli import main; sys.exit(main(sys.argv[1:]))"


class InfGradient(Callback):
    """Turns the gradient of one weight to inf during the backward of the batches in `batches` (the loss stays
    finite), and records the weights after every batch."""

    def __init__(self, weight, batches):
        self.weight, self.batches, self.after = weight, set(batches), []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx in self.batches:
            handle = None

            def hook(grad):
                handle.remove()
                return torch.full_like(grad, float("inf"))

            handle = self.weight(module).register_hook(hook)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append({k: v.detach().clone() for k, v in module.named_parameters()})


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _finite(params):
    return all(torch.isfinite(v).all() for v in params.values())


def _tokenizer(tmp_path, callback, steps, limit=10, every=100):
    overrides = [f"trainer.max_steps={steps}", "data.batch_size=2", "loss.disc_start=0", "trainer.threads=1",
                 "trainer.val_every_n_steps=100", "trainer.image_every_n_steps=0",
                 f"trainer.checkpoint_every_n_steps={every}", f"trainer.max_nonfinite_skips={limit}"]  # fmt: skip
    config = load_config("tiny", overrides)
    data = PhotoDataModule(config.data, train_crops=16, val_crops=2)
    return fit_tokenizer(config, tmp_path, datamodule=data, progress=False, callbacks=[callback])


def test_tokenizer_skips_a_step_with_an_infinite_gradient(tmp_path):
    spy = InfGradient(lambda m: m.decoder.conv_out.weight, batches=[1])
    with pytest.warns(UserWarning, match=r"non-finite gradient \(finite loss\) at step 1: update skipped"):
        trainer, module = _tokenizer(tmp_path, spy, steps=3)
    assert len(spy.after) == 4 and module.batch_step == 3  # 4 batches for 3 updates
    assert _same(spy.after[1], spy.after[0])  # generator and discriminator: no update
    assert not _same(spy.after[2], spy.after[1])
    assert all(_finite(p) for p in spy.after)
    assert [float(s["step"]) for o in module.optimizers() for s in list(o.optimizer.state.values())[:1]] == [3, 3]


def test_ar_skips_a_step_with_an_infinite_gradient(tokens, tmp_path):
    spy = InfGradient(lambda m: m.transformer.head[1].weight, batches=[1])
    config = load_ar_config("ar-tiny", [f"data.tokens={tokens / 'tokens'}", "trainer.max_steps=3",
                                        "data.batch_size=4", "trainer.threads=1"])  # fmt: skip
    with pytest.warns(UserWarning, match=r"non-finite gradient \(finite loss\) at step 1: update skipped"):
        fit_ar(config, tmp_path, progress=False, callbacks=[spy])
    assert _same(spy.after[1], spy.after[0])  # grad clip did not turn inf into NaN updates: no update at all
    assert not _same(spy.after[2], spy.after[1])
    assert all(_finite(p) for p in spy.after)


def test_infinite_gradients_in_a_row_stop_the_run(tmp_path):
    spy = InfGradient(lambda m: m.decoder.conv_out.weight, batches=[1, 2])
    stop = r"non-finite gradient \(finite loss\) at step 1: 2 in a row, more than .*=1; stopping"
    with pytest.warns(UserWarning), pytest.raises(NonFiniteLossError, match=stop):
        _tokenizer(tmp_path, spy, steps=4, limit=1)
    assert all(_finite(p) for p in spy.after)  # the skipped steps left the weights finite


def test_no_checkpoint_holds_non_finite_weights(tmp_path):
    class Poison(Callback):  # an inf weight after batch 1's update, before its checkpoint
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 1:
                with torch.no_grad():
                    module.decoder.conv_out.weight[0, 0, 0, 0] = float("inf")

    with pytest.raises(NonFiniteLossError, match=r"non-finite values in decoder.conv_out.weight at step 2: checkpoint"):
        _tokenizer(tmp_path, Poison(), steps=4, every=1)
    written = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert written  # the checkpoint of batch 1 (before the poison)
    for path in written:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 2  # Lightning counts G and D: batch 0's
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_cli_stop_is_one_true_line(tokens, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-c", CLI, "train", "ar", "--config", "ar-tiny", "--data", str(tokens / "tokens"),
            "--out", str(out), "--max-steps", "5", "--no-progress", "--threads", "1", "--set", "optim.lr=3e38",
            "--set", "trainer.max_nonfinite_skips=0", "--set", "data.batch_size=4",
            "--set", "trainer.checkpoint_every_n_steps=1"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("magvit2 train: error: non-finite") and "stopping" in lines[-1]
    for path in (out / "checkpoints").glob("*.ckpt"):  # the stop says checkpoints hold finite weights: they do
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
