"""`magvit2 convert | reconstruct | encode` on real image files (scikit-image's sample photos) with a tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magvit2 import Tokenizer
from magvit2.cli import main
from magvit2.data import TokenShards, load_image, to_uint8
from magvit2.eval import psnr
from magvit2.ops.threads import using_threads

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Four real photos in a folder tree: RGB PNG, JPEG, grayscale PNG, RGBA PNG in a subfolder."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()[::4, ::4]).save(folder / "astronaut.png")  # 128 x 128
    Image.fromarray(data.chelsea()[::3, ::3]).save(folder / "chelsea.jpg", quality=95)  # 100 x 151
    Image.fromarray(data.camera()[::4, ::4]).save(folder / "camera.png")  # 128 x 128, grayscale
    (folder / "more").mkdir()
    coffee = data.coffee()[::4, ::4]  # 100 x 150
    alpha = np.full(coffee.shape[:2] + (1,), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([coffee, alpha], axis=2)).save(folder / "more" / "coffee.png")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    Tokenizer.from_preset("tiny").save_pretrained(path)
    return path


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 (H, W, 3) images on the [0, 1] scale."""
    return float(psnr(*(torch.from_numpy(u).permute(2, 0, 1)[None].double() / 255 for u in (a, b)))[0])


def test_convert_official_checkpoint(tmp_path, capsys):
    torch.manual_seed(1)
    raw, ema = Tokenizer.from_preset("tiny"), Tokenizer.from_preset("tiny")
    sd = dict(raw.state_dict())
    sd.update({"model_ema." + k.replace(".", ""): v for k, v in ema.state_dict().items()})
    sd["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "official.ckpt")
    assert main(["convert", str(tmp_path / "official.ckpt"), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    n = len(ema.state_dict())
    assert f"ema weights, {n} tensors" in out and f"{n + 1} other keys ignored" in out  # the raw copies + loss.*
    converted = Tokenizer.from_pretrained(tmp_path / "out")
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in ema.state_dict().items())
    assert main(["convert", "--no-ema", str(tmp_path / "official.ckpt"), str(tmp_path / "raw")]) == 0
    assert torch.equal(Tokenizer.from_pretrained(tmp_path / "raw").state_dict()["encoder.conv_in.weight"],
                       raw.state_dict()["encoder.conv_in.weight"])  # fmt: skip


def test_reconstruct_writes_side_by_side_and_psnr(images, model_dir, tmp_path, capsys):
    files = [images / "chelsea.jpg", images / "camera.png", images / "more" / "coffee.png"]
    args = ["--model", str(model_dir), *map(str, files), "--out", str(tmp_path / "rec"), "--threads", "1"]
    assert main(["reconstruct", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("mean PSNR")
    model = Tokenizer.from_pretrained(model_dir)
    for path, line in zip(files, lines, strict=False):
        x = load_image(path, multiple_of=4)  # native size cropped to the factor (chelsea 100x151 -> 100x148)
        pair = np.asarray(Image.open(tmp_path / "rec" / f"{path.stem}.png"))
        h, w = x.shape[1:]
        assert pair.shape == (h, 2 * w, 3)
        assert np.array_equal(pair[:, :w], to_uint8(x))
        with torch.no_grad(), using_threads(1):  # the float path (and so the rounding) depends on the threads
            rec = to_uint8(model.decode(model.encode(x[None]).quantized)[0])
        assert np.array_equal(pair[:, w:], rec)
        assert f"{h}x{w}  tokens {h // 4}x{w // 4}  PSNR {_psnr(pair[:, :w], pair[:, w:]):.2f} dB" in line
    rc = main(["reconstruct", "--model", str(model_dir), str(files[0]), "--out", str(tmp_path / "s"), "--size", "32"])
    assert rc == 0 and np.asarray(Image.open(tmp_path / "s" / "chelsea.png")).shape == (32, 64, 3)


def test_encode_folder_to_shards(images, model_dir, tmp_path, capsys):
    out = tmp_path / "tokens"
    argv = ["encode", "--model", str(model_dir), "--data", str(images), "--out", str(out), "--size", "64",
            "--batch-size", "3", "--shard-size", "3"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "4/4" in captured.err  # the progress bar
    assert "encoded 4 images to 16x16 tokens in 2 shard(s)" in captured.out
    index = json.loads((out / "tokens.json").read_text())
    assert index["num_images"] == 4 and index["image_size"] == [64, 64] and index["grid"] == [16, 16]
    assert [s["count"] for s in index["shards"]] == [3, 1]
    assert index["model_config"]["ch_mult"] == [1, 1, 2] and index["bit_order"] == "lsb-first"
    assert index["preprocess"]["size"] == 64 and index["model"] == str(model_dir)
    assert index["class_names"] == ["", "more"]  # parent folders of the sources: the data root's own is ""
    tokens = TokenShards(out)
    assert tokens.sources == ["astronaut.png", "camera.png", "chelsea.jpg", "more/coffee.png"]
    model = Tokenizer.from_pretrained(model_dir)
    for i, source in enumerate(tokens.sources):
        with torch.no_grad():
            want = model.encode(load_image(images / source, size=64, multiple_of=4)[None]).indices[0]
        assert torch.equal(tokens[i], want)
    assert tokens.load_all().shape == (4, 16, 16)


def test_encode_factorized_model(images, tmp_path):
    torch.manual_seed(0)
    Tokenizer.from_preset("tiny", factorized_bits=(6, 12)).save_pretrained(tmp_path / "ar")
    argv = ["encode", "--model", str(tmp_path / "ar"), "--data", str(images), "--out", str(tmp_path / "t"),
            "--size", "32", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    tokens = TokenShards(tmp_path / "t")
    assert tokens.meta["factorized_bits"] == [6, 12]
    pre, post = tokens.split(tokens.load_all())
    model = Tokenizer.from_pretrained(tmp_path / "ar")
    with torch.no_grad():
        want_pre, want_post = model.encode(load_image(images / "astronaut.png", size=32, multiple_of=4)[None]).indices
    assert torch.equal(pre[0], want_pre[0]) and torch.equal(post[0], want_post[0])


def test_cli_errors_are_one_line(images, model_dir, tmp_path, capsys):
    argv = ["encode", "--model", str(model_dir), "--data", str(images), "--out", str(tmp_path / "n"), "--size", "0",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "differ in size" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    argv = ["encode", "--model", str(model_dir), "--data", str(images), "--out", str(tmp_path / "busy")]
    assert main(argv) == 2 and "not empty" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    argv = ["encode", "--model", str(model_dir), "--data", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 2 and "none of the 1 image files can be read: " in capsys.readouterr().err
    assert main(["reconstruct", "--model", str(tmp_path / "nope"), str(images / "camera.png"), "--out", "x"]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "--factorized-bits", "six", "a.ckpt", "out"])


def test_entry_point_subprocess(images, model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "magvit2.cli",
            "reconstruct",
            "--model",
            str(model_dir),
            str(images / "astronaut.png"),
            "--out",
            str(tmp_path / "r"),
            "--size",
            "64",
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "astronaut.png" in run.stdout and "tokens 16x16" in run.stdout
    assert (tmp_path / "r" / "astronaut.png").is_file()


def test_reconstruct_takes_a_folder_and_keeps_an_existing_output(images, model_dir, tmp_path, capsys):
    out = tmp_path / "rec"
    assert main(["reconstruct", "--model", str(model_dir), str(images), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "camera.png", "chelsea.png", "coffee.png"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["reconstruct", "--model", str(model_dir), str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty; choose a new one" in err[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing overwritten


def test_sample_checks_the_output_name_before_loading_anything(tmp_path, capsys):
    args = ["sample", "--model", str(tmp_path / "no-model"), "--classes", "1", "--out", str(tmp_path / "grid.bmp")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--out must end in .npz, .png or .jpg, got grid.bmp" in err and "no-model" not in err
