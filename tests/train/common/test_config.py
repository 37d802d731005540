"""Config values as people write them (5e-4 is a float), and every wrong type or value of a config field is one
ValueError naming `section.key` and what was expected, never a raw TypeError; architecture fields are bounded."""

import json

import pytest

from magvit2.checkpoints import load_checkpoint
from magvit2.nn import Tokenizer
from magvit2.train.ar.config import load_ar_config
from magvit2.train.common.config import parse_override, read_yaml
from magvit2.train.tokenizer.config import load_config


@pytest.mark.parametrize(
    "text, value",
    [("5e-4", 5e-4), ("1e5", 1e5), ("2E+3", 2e3), ("-3e2", -300.0), ("1.0e-5", 1e-5), ("[1e-3, 2]", [1e-3, 2]),
     ("7", 7), ("0.5", 0.5), ("e5", "e5"), ("abc", "abc"), ("null", None)],
)  # fmt: skip
def test_numbers_parse_as_written(text, value):
    assert parse_override(f"optim.lr={text}") == (["optim", "lr"], value)


def test_scientific_numbers_in_files_and_overrides_train_configs(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: tiny\noptim:\n  lr: 5e-4\ntrainer:\n  max_steps: 1e1\n")
    assert read_yaml(path)["optim"]["lr"] == 5e-4
    config = load_config("tiny", ["optim.lr=5e-4"])
    assert config.optim.lr == 5e-4
    assert load_ar_config("ar-tiny", ["optim.lr=3e-4", "optim.weight_decay=5e-2"]).optim.weight_decay == 0.05
    with pytest.raises(ValueError, match=r"trainer.max_steps must be an int, got 10.0"):  # 1e1 is a float
        load_config(path)


TOKENIZER_CASES = [
    ("optim.lr=abc", "optim.lr must be a finite number"),
    ("optim.lr=.inf", "optim.lr must be a finite number"),
    ("optim.lr=.nan", "optim.lr must be a finite number"),
    ("optim.lr=0", "optim.lr must be a finite number > 0"),
    ("optim.lr_drop_factor=0", "optim.lr_drop_factor must be a finite number > 0"),
    ("optim.betas=[0.5]", "optim.betas must be a list of 2 finite numbers"),
    ("optim.betas=x", "optim.betas must be a list of 2 finite numbers"),
    ("optim.betas=[0.5, 1.5]", r"optim.betas must be two numbers in \[0, 1\)"),
    ("optim.lr_drop_epochs=[a]", "optim.lr_drop_epochs must be a list of ints"),
    ("optim.lr_drop_epochs=[-1]", "optim.lr_drop_epochs must be epochs >= 0"),
    ("optim.ema_decay=x", "optim.ema_decay must be a finite number"),
    ("optim.ema_warmup=3", "optim.ema_warmup must be true or false"),
    ("data.size=x", "data.size must be an int"),
    ("data.size=1.5", "data.size must be an int"),
    ("data.batch_size=0", "data.batch_size must be a positive int"),
    ("data.val_images=0", "data.val_images must be a positive int or null"),
    ("data.num_workers=-1", "data.num_workers must be an int >= 0"),
    ("data.train=[1]", "data.train must be a string or null"),
    ("loss.disc_start=x", "loss.disc_start must be an int"),
    ("loss.disc_start=-1", "loss.disc_start must be an int >= 0"),
    ("loss.disc_ndf=0", "loss.disc_ndf must be an int >= 1"),
    ("loss.disc_weight=x", "loss.disc_weight must be a finite number"),
    ("loss.lecam_decay=1", r"loss.lecam_decay must be in \[0, 1\)"),
    ("loss.gen_loss_weight=x", "loss.gen_loss_weight must be a finite number or null"),
    ("loss.lpips_random=yes please", "loss.lpips_random must be true or false"),
    ("trainer.max_steps=x", "trainer.max_steps must be an int"),
    ("trainer.max_steps=0", r"trainer.max_steps must be a positive int, or -1 \(no limit\), got 0"),
    ("trainer.max_steps=-2", r"trainer.max_steps must be a positive int, or -1 \(no limit\), got -2"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be a positive int"),
    ("trainer.precision=16", "trainer.precision must be a string"),
    ("trainer.devices=[1]", "trainer.devices must be an int or a string"),
    ("trainer.devices=0", "trainer.devices must be a positive int or 'auto'"),
    ("trainer.num_nodes=0", "trainer.num_nodes must be an int >= 1"),
    ("trainer.seed=x", "trainer.seed must be an int"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be an int >= 1"),
    ("trainer.checkpoint_every_n_steps=0", "trainer.checkpoint_every_n_steps must be an int >= 1"),
    ("trainer.image_every_n_steps=-1", "trainer.image_every_n_steps must be an int >= 0"),
    ("trainer.val_every_n_epochs=x", "trainer.val_every_n_epochs must be an int"),
    ("trainer.max_nonfinite_skips=1.5", "trainer.max_nonfinite_skips must be an int"),
    ("model.ch=x", "model.ch must be an int"),
    ("model.ch_mult=x", "model.ch_mult must be a list of ints"),
    ("model.z_channels=1e12", "model.z_channels must be an int"),
    ("model.entropy_weight=x", "model.entropy_weight must be a finite number"),
    ("model.force_fp32=2", "model.force_fp32 must be true or false"),
    ("model.z_channels=40", r"z_channels must be an int in \[1, 32\], got 40"),
    ("model.ch=8192", r"ch must be an int in \[1, 4096\], got 8192"),
    ("model.num_res_blocks=1000", r"num_res_blocks must be an int in \[1, 64\], got 1000"),
    ("model.ch_mult=[1,1,1,1,1,1,1,1,1]", "ch_mult must be 1 to 8 positive ints"),
]


@pytest.mark.parametrize("override, message", TOKENIZER_CASES)
def test_tokenizer_config_errors_name_the_field(override, message):
    with pytest.raises(ValueError, match=message) as error:
        load_config("tiny", [override])
    assert "\n" not in str(error.value)


AR_CASES = [
    ("optim.lr=.inf", "optim.lr must be a finite number"),
    ("optim.lr=-1", "optim.lr must be a finite number > 0"),
    ("optim.weight_decay=-1", "optim.weight_decay must be a finite number >= 0"),
    ("optim.grad_clip=x", "optim.grad_clip must be a finite number"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be an int >= 0"),
    ("optim.warmup_steps=1.5", "optim.warmup_steps must be an int"),
    ("optim.wp0=-0.1", "optim.wp0 must be a finite number >= 0"),
    ("optim.decay_norms=x", "optim.decay_norms must be true or false"),
    ("optim.betas=[0.9, 1]", r"optim.betas must be two numbers in \[0, 1\)"),
    ("data.batch_size=x", "data.batch_size must be an int"),
    ("data.num_workers=-1", "data.num_workers must be an int >= 0"),
    ("data.tokens=3", "data.tokens must be a string or null"),
    ("trainer.max_steps=0", "trainer.max_steps must be a positive int"),
    ("model.dim=x", "model.dim must be an int"),
    ("model.dim=100000", r"dim must be an int in \[1, 16384\]"),
    ("model.block_size=100000", r"block_size must be an int in \[1, 65536\]"),
    ("model.spatial_n_layer=1000", r"spatial_n_layer must be an int in \[1, 256\]"),
    ("model.factorized_bits=[6, 40]", r"factorized_bits must be two ints in \[1, 18\]"),
    ("model.factorized_bits=[6]", "model.factorized_bits must be a list of 2 ints"),
    ("model.token_drop=x", "model.token_drop must be a finite number"),
    ("model.rope_base=.inf", "model.rope_base must be a finite number"),
]


@pytest.mark.parametrize("override, message", AR_CASES)
def test_ar_config_errors_name_the_field(override, message):
    with pytest.raises(ValueError, match=message) as error:
        load_ar_config("ar-tiny", [override])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "field, value, message",
    [("z_channels", 1e12, r"TokenizerConfig.z_channels must be an int in \[1, 32\], got 1000000000000.0"),
     ("z_channels", 10**12, r"TokenizerConfig.z_channels must be an int in \[1, 32\]"),
     ("ch", 10**9, r"TokenizerConfig.ch must be an int in \[1, 4096\]"),
     ("ch_mult", [1, "2"], "TokenizerConfig.ch_mult must be a list of ints")],
)  # fmt: skip
def test_model_folder_config_json_is_bounded(tmp_path, field, value, message):
    folder = tmp_path / "model"
    Tokenizer.from_preset("tiny").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_checkpoint(folder)
