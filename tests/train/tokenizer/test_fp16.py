"""fp16 (16-mixed, a real GradScaler, also on a CPU) tokenizer training with the discriminator starting later
(loss.disc_start > 0, the tiny and digits presets): before the start D has no gradients, its optimizer step passes
the scaler (which refuses an optimizer it saw no gradients of), and the run counts its steps as usual."""

import pytest

from magvit2.cli import main
from magvit2.demos.photos_data import PhotoDataModule
from magvit2.train.tokenizer.config import load_config
from magvit2.train.tokenizer.fit import fit_tokenizer


def test_cli_16_mixed_with_the_tiny_preset(tokens, tmp_path, capsys):
    args = ["train", "tokenizer", "--config", "tiny", "--data", str(tokens / "images"), "--out", str(tmp_path),
            "--precision", "16-mixed", "--max-steps", "2", "--no-progress", "--threads", "1",
            "--set", "data.size=32", "--set", "data.batch_size=4"]  # fmt: skip
    assert main(args) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("disc_start", [1, 3])
def test_discriminator_starts_under_the_scaler(tmp_path, disc_start):
    overrides = ["trainer.max_steps=4", "trainer.precision=16-mixed", "trainer.accelerator=cpu", "data.batch_size=2",
                 f"loss.disc_start={disc_start}", "trainer.val_every_n_steps=100", "trainer.image_every_n_steps=0",
                 "trainer.threads=1"]  # fmt: skip
    config = load_config("tiny", overrides)
    data = PhotoDataModule(config.data, train_crops=16, val_crops=2)
    trainer, module = fit_tokenizer(config, tmp_path, datamodule=data, progress=False)
    assert trainer.precision_plugin.scaler is not None  # the fp16 path, not a bf16 fallback
    assert module.batch_step == 4 and trainer.global_step == 8  # both optimizers counted every batch
    opt_g, opt_d = (o.optimizer for o in module.optimizers())
    d_steps = {float(s["step"]) for s in opt_d.state.values()}
    assert d_steps and max(d_steps) <= 4 - disc_start  # D updated only from disc_start (fewer if the scaler skips)
