"""The tokenizer trainer end to end on real image files: configs, CLI training, checkpoints, export, resume."""

import json

import pytest
import torch

from magvit2.checkpoints import load_checkpoint
from magvit2.cli import main
from magvit2.demos.photos_data import PhotoDataModule, available_photos, load_photo
from magvit2.train.common.config import preset_names
from magvit2.train.tokenizer.config import load_config
from magvit2.train.tokenizer.fit import fit_tokenizer
from magvit2.train.tokenizer.module import TokenizerModule


def test_presets_reproduce_the_official_recipes():
    assert {"open-magvit2-256-L", "open-magvit2-128-L", "tiny"} <= set(preset_names())
    c256, c128 = load_config("open-magvit2-256-L"), load_config("open-magvit2-128-L")
    assert (c256.loss.lecam_weight, c128.loss.lecam_weight) == (0.05, 0.01)
    assert (c256.optim.lr_drop_epochs, c128.optim.lr_drop_epochs) == ((200, 250), (250, 300))
    assert (c256.trainer.max_epochs, c128.trainer.max_epochs) == (270, 350)
    assert (c256.data.size, c128.data.size) == (256, 128)
    for c in (c256, c128):
        assert c.optim.lr == 1e-4 and c.optim.betas == (0.5, 0.9) and c.optim.ema_decay == 0.999
        assert c.loss.gen_loss_weight == 0.1 and c.loss.disc_start == 0 and c.data.batch_size == 8
        assert c.tokenizer_config().entropy_weight == 0.1 and c.tokenizer_config().commitment_weight == 0.25
    assert c256.tokenizer_config().ch_mult == (1, 1, 2, 2, 4) and c128.tokenizer_config().ch_mult == (1, 2, 2, 4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", r"optim: unknown key\(s\) \['lrr'\]; valid keys: \['lr'"),
        ("model.chh=3", r"model: unknown key\(s\) \['chh'\]"),
        ("model.preset=huge", "unknown preset 'huge'"),
        ("optim.lr=-1", "optim.lr must be a finite number > 0"),
        ("loss.disc_loss=wgan", "disc_loss must be"),
        ("trainer.precision=8-bit", "trainer.precision"),
        ("data.batch_size=0", "data.batch_size must be a positive int"),
        ("optimizer.lr=1", r"config: unknown section\(s\) \['optimizer'\]"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("tiny", [override])


def test_unknown_config_source():
    with pytest.raises(FileNotFoundError, match="no such preset"):
        load_config("nope.yaml")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A folder of real photographs (PNG and JPEG) from scikit-image, one subfolder per 'class'."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(available_photos(("astronaut", "coffee", "rocket", "chelsea", "camera", "coins"))):
        folder = root / f"class{i % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(load_photo(name, shorter_side=48)).save(folder / f"{name}.{'png' if i % 2 else 'jpg'}")
    return root


def test_cli_train_export_and_eval_on_image_folder(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", "tokenizer", "--config", "tiny", "--data", str(image_folder), "--out", str(out), "--max-steps", "4",
         "--no-progress", "--set", "data.batch_size=2", "--set", "loss.disc_start=2",
         "--set", "trainer.checkpoint_every_n_steps=2", "--set", "trainer.image_every_n_steps=2",
         "--set", "trainer.log_every_n_steps=1"]
    )  # fmt: skip
    assert code == 0
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step-000002.ckpt", "step-000004.ckpt"]
    logs = out / "logs" / "version_0"
    assert (out / "images" / "final.png").is_file() and (logs / "metrics.csv").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in logs.iterdir())  # TensorBoard
    assert "train/l1" in (logs / "metrics.csv").read_text().splitlines()[0]

    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["magvit2"]["batch_step"] == 4 and ckpt["magvit2"]["config"]["model"]["preset"] == "tiny"
    sd = ckpt["state_dict"]
    assert "model_ema.encoderconv_inweight" in sd and "loss.discriminator.main.0.weight" in sd
    assert not torch.equal(sd["model_ema.encoderconv_inweight"], sd["encoder.conv_in.weight"])

    ema = load_checkpoint(out / "checkpoints" / "last.ckpt")  # the official loader path, EMA preferred
    torch.testing.assert_close(ema.state_dict()["encoder.conv_in.weight"], sd["model_ema.encoderconv_inweight"])
    raw = load_checkpoint(out / "checkpoints" / "last.ckpt", use_ema=False)
    torch.testing.assert_close(raw.state_dict()["encoder.conv_in.weight"], sd["encoder.conv_in.weight"])

    assert main(["convert", str(out / "checkpoints" / "last.ckpt"), str(tmp_path / "converted")]) == 0
    converted = load_checkpoint(tmp_path / "converted")
    torch.testing.assert_close(converted.state_dict()["encoder.conv_in.weight"], sd["model_ema.encoderconv_inweight"])
    assert main(["export", str(out / "checkpoints" / "last.ckpt"), str(tmp_path / "exported")]) == 0
    exported = load_checkpoint(tmp_path / "exported")
    torch.testing.assert_close(exported.state_dict()["decoder.conv_out.weight"], sd["model_ema.decoderconv_outweight"])
    assert exported.config.ch == 32 and exported.config.entropy_weight == 0.1

    from magvit2.eval import InceptionV3FID

    torch.manual_seed(0)
    torch.save(InceptionV3FID().state_dict(), tmp_path / "inception.pth")  # random weights: the real file is offline
    capsys.readouterr()
    assert main(["eval", "tokenizer", "--model", str(tmp_path / "exported"), "--data", str(image_folder),
                 "--size", "32", "--out", str(tmp_path / "eval"), "--no-progress",
                 "--inception", str(tmp_path / "inception.pth")]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 6 and 0 < metrics["psnr"] < 60 and metrics["used_codes"] >= 1
    assert metrics["rfid"] is not None and metrics["rfid"] > 0
    assert (tmp_path / "eval" / "codebook_usage.png").is_file()


def test_cli_train_errors(tmp_path, capsys):
    assert (
        main(["train", "tokenizer", "--config", "tiny", "--data", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    )
    assert "image folder not found" in capsys.readouterr().err
    assert main(["train", "tokenizer", "--config", "tiny", "--out", str(tmp_path)]) == 2
    assert "data.train is not set" in capsys.readouterr().err
    assert main(["train", "tokenizer", "--config", "tiny", "--set", "optim.bogus=1", "--out", str(tmp_path)]) == 2
    assert "valid keys" in capsys.readouterr().err


def _fit(out, steps, resume=None):
    config = load_config(
        "tiny",
        [f"trainer.max_steps={steps}", "trainer.checkpoint_every_n_steps=3", "trainer.image_every_n_steps=0",
         "loss.disc_start=1", "data.batch_size=4", "optim.lr_drop_epochs=[1]", "optim.ema_decay=0.9"],
    )  # fmt: skip
    datamodule = PhotoDataModule(config.data, train_crops=12, val_crops=4)  # 3 steps per epoch
    trainer, module = fit_tokenizer(config, out, datamodule=datamodule, progress=False, resume=resume)
    return trainer, module


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    _, straight = _fit(tmp_path / "a", 6)
    _, first = _fit(tmp_path / "b", 3)
    assert first.batch_step == 3
    trainer, resumed = _fit(tmp_path / "b", 6, resume="auto")
    assert resumed.batch_step == straight.batch_step == 6
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:  # weights, discriminator (BN stats), EMA, LeCAM EMAs
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed.loss.lecam.ema_real.item() != 0.0
    for oa, ob, steps in zip(straight.optimizers(), resumed.optimizers(), (6, 5), strict=True):  # D from step 1
        assert oa.param_groups[0]["lr"] == ob.param_groups[0]["lr"] == pytest.approx(1e-4)  # dropped after epoch 1
        sa, sb = oa.optimizer.state_dict()["state"], ob.optimizer.state_dict()["state"]
        for i in sa:
            torch.testing.assert_close(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=0, atol=0)
            assert float(sa[i]["step"]) == float(sb[i]["step"]) == steps


def test_module_state_dict_has_official_training_keys():
    module = TokenizerModule(load_config("tiny"))
    keys = list(module.state_dict())
    assert all(k.startswith(("encoder.", "decoder.", "loss.", "model_ema.")) for k in keys)
    assert {"model_ema.decay", "model_ema.num_updates", "loss.lecam.ema_real"} <= set(keys)
    n_tok = sum(1 for k in keys if k.startswith(("encoder.", "decoder.")))
    n_ema = sum(1 for k in keys if k.startswith("model_ema.")) - 2
    assert n_ema == sum(1 for _ in module.tokenizer.parameters()) and n_tok >= n_ema


def test_photo_crops_are_reproducible_and_held_out():
    dm = PhotoDataModule(load_config("tiny").data, train_crops=8, val_crops=4)
    dm.setup()
    a = dm.train_set[3]
    again = PhotoDataModule(load_config("tiny").data, train_crops=8, val_crops=4)
    again.setup()
    assert torch.equal(a, again.train_set[3]) and not torch.equal(a, dm.train_set[4])
    assert a.shape == (3, 32, 32) and a.min() >= -1 and a.max() <= 1
    train_pixels = {tuple(p[:2, :2].flatten().tolist()) for p in dm.train_set.photos}
    assert all(tuple(p[:2, :2].flatten().tolist()) not in train_pixels for p in dm.val_set.photos)


def test_npu_accelerator_without_torch_npu_is_a_clear_error(image_folder, tmp_path, capsys):
    from magvit2.train.common.npu import NPUAccelerator

    assert NPUAccelerator.parse_devices(2) == [0, 1] and NPUAccelerator.parse_devices("0,3") == [0, 3]
    assert NPUAccelerator.is_available() is False  # no torch_npu on this machine
    args = ["train", "tokenizer", "--config", "tiny", "--data", str(image_folder), "--out", str(tmp_path)]
    assert main([*args, "--accelerator", "npu", "--no-progress"]) == 2
    assert "needs torch_npu" in capsys.readouterr().err


def test_bf16_mixed_training_keeps_the_lfq_in_fp32(tmp_path):
    config = load_config("tiny", ["trainer.max_steps=2", "trainer.precision=bf16-mixed", "data.batch_size=2",
                                  "trainer.image_every_n_steps=0", "loss.disc_start=0"])  # fmt: skip
    datamodule = PhotoDataModule(config.data, train_crops=4, val_crops=2)
    trainer, module = fit_tokenizer(config, tmp_path, datamodule=datamodule, progress=False)
    assert module.batch_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/total"])
    x = datamodule.train_set[0][None]
    tok = module.tokenizer.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = tok.encoder(x)
        lfq = tok.quantizer(z)
    assert z.dtype == torch.bfloat16 and lfq.codebook_entropy.dtype == torch.float32
    exact = type(tok.quantizer)(dim=18).train()(z.float())
    assert lfq.codebook_entropy.item() == exact.codebook_entropy.item()
    assert lfq.per_sample_entropy.item() == exact.per_sample_entropy.item()


def test_image_datamodule_imagenet_layout_and_plain_folder(tmp_path):
    from PIL import Image

    from magvit2.train.tokenizer.config import DataConfig
    from magvit2.train.tokenizer.data import ImageDataModule

    for split, names in (("train", ("astronaut", "rocket", "coffee")), ("val", ("chelsea",))):
        for name in names:
            folder = tmp_path / "imagenet" / split / "n0001"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(load_photo(name, shorter_side=40)).save(folder / f"{name}.JPEG")
    dm = ImageDataModule(DataConfig(train=str(tmp_path / "imagenet"), size=32, batch_size=2, num_workers=0))
    assert dm.train_dir.name == "train" and dm.val_dir.name == "val"
    dm.setup()
    assert len(dm.train_set) == 3 and len(dm.val_set) == 1
    files = [p.name for p in dm.train_set.paths]
    rocket = files.index("rocket.JPEG")  # 427 x 640: resized to 32 x 48, so crops can move sideways
    crops = [dm.train_set[(rocket, epoch)] for epoch in range(6)]
    a = crops[0]
    assert a.shape == (3, 32, 32) and -1 <= a.min() and a.max() <= 1
    assert any(not torch.equal(a, c) for c in crops[1:])  # a new random crop every epoch ...
    assert torch.equal(dm.train_set[(rocket, 3)], crops[3])  # ... drawn from (seed, epoch, index): reproducible
    assert torch.equal(dm.val_set[0], dm.val_set[0]) and dm.val_set[0].shape == (3, 32, 32)  # center crop
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (2, 3, 32, 32)

    plain = ImageDataModule(DataConfig(train=str(tmp_path / "imagenet" / "train" / "n0001"), size=32))
    plain.setup()
    assert plain.val_set is None and len(plain.train_set) == 3
    with pytest.raises(ValueError, match="data.train is not set"):
        ImageDataModule(DataConfig())
