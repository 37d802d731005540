"""Image folders as they come: unreadable, truncated, empty, non-image, grayscale, RGBA, CMYK, 16-bit and huge files.
Bad files are skipped with one summary warning; nothing crashes a DataLoader worker."""

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from magvit2.data.datasets import RandomCropFolder
from magvit2.data.images import (
    MAX_PIXELS,
    UnreadableImage,
    list_images,
    load_image,
    open_rgb,
    usable_images,
)
from magvit2.demos.photos_data import load_photo


def _huge_png_header(path, width, height):
    """A real PNG whose header declares width x height (a 1x1 image with its IHDR rewritten, CRC fixed)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    photo = load_photo("astronaut", shorter_side=48)
    Image.fromarray(photo).save(root / "a_good.png")
    Image.fromarray(photo).convert("L").save(root / "b_gray.png")
    Image.fromarray(photo).convert("RGBA").save(root / "c_rgba.png")
    Image.fromarray(photo).convert("CMYK").save(root / "d_cmyk.jpg")
    wide = (np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 28).astype(np.uint16)
    Image.fromarray(wide).save(root / "e_16bit.png")
    Image.fromarray(photo).save(root / "f_truncated.jpg", quality=90)
    full = (root / "f_truncated.jpg").read_bytes()
    (root / "f_truncated.jpg").write_bytes(full[: len(full) // 3])
    (root / "g_empty.png").write_bytes(b"")
    (root / "h_text.jpg").write_text("not an image at all\n")
    _huge_png_header(root / "i_huge.png", 30000, 30000)
    return root


def test_header_scan_drops_the_bad_files_with_one_warning(messy):
    with pytest.warns(UserWarning) as caught:
        good = usable_images(list_images(messy))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("skipped 3 of 9 image files")
    assert "g_empty.png: empty file" in message and "h_text.jpg: not an image" in message
    assert f"i_huge.png: larger than {MAX_PIXELS} pixels" in message
    assert [p.name for p in good] == [
        "a_good.png",
        "b_gray.png",
        "c_rgba.png",
        "d_cmyk.jpg",
        "e_16bit.png",
        "f_truncated.jpg",
    ]  # fmt: skip  (truncation only shows when decoding)


def test_modes_convert_to_rgb(messy):
    good = np.asarray(open_rgb(messy / "a_good.png"))
    gray = np.asarray(open_rgb(messy / "b_gray.png"))
    assert gray.shape == good.shape and (gray[..., 0] == gray[..., 1]).all()
    assert np.array_equal(np.asarray(open_rgb(messy / "c_rgba.png")), good)  # alpha dropped, colour kept
    assert open_rgb(messy / "d_cmyk.jpg").mode == "RGB"
    wide = np.asarray(Image.open(messy / "e_16bit.png"), dtype=np.float64)
    scaled = np.asarray(open_rgb(messy / "e_16bit.png"))[..., 0]
    assert np.array_equal(scaled, np.round(wide * 255 / 65535).astype(np.uint8))  # not clipped to white
    assert scaled.max() > 200 and scaled.min() == 0
    with pytest.raises(UnreadableImage, match="f_truncated.jpg"):
        open_rgb(messy / "f_truncated.jpg")
    with pytest.raises(UnreadableImage, match="cannot read image .*h_text.jpg"):
        load_image(messy / "h_text.jpg")


def test_a_file_failing_to_decode_is_replaced_and_workers_survive(messy):
    with pytest.warns(UserWarning):
        files = usable_images(list_images(messy))
    dataset = RandomCropFolder(files, size=32)
    with pytest.warns(UserWarning, match="failed to decode: .*f_truncated.jpg"):
        image, j = dataset.item(5)  # the truncated file
    assert files[j].name == "a_good.png" and image.shape == (3, 32, 32)  # wrapped round to the next readable one
    loader = DataLoader(dataset, batch_size=3, num_workers=2, shuffle=True, drop_last=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    assert [b.shape[0] for b in batches] == [3, 3]
    assert all(torch.isfinite(b).all() and b.min() >= -1 and b.max() <= 1 for b in batches)


def test_folders_with_nothing_usable_are_clear_errors(tmp_path, messy):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        list_images(tmp_path / "empty")
    bad = [messy / "g_empty.png", messy / "h_text.jpg"]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the 2 image files can be read"):
        usable_images(bad)


def test_encode_and_training_data_on_a_messy_folder(messy, tmp_path):
    from magvit2.data import TokenShards
    from magvit2.nn import Tokenizer
    from magvit2.pipelines.encode import encode_folder
    from magvit2.train.tokenizer.config import DataConfig
    from magvit2.train.tokenizer.data import ImageDataModule

    model = Tokenizer.from_preset("tiny").eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = encode_folder(model, messy, tmp_path / "tokens", size=32, batch_size=4, progress=False)
    shards = TokenShards(tmp_path / "tokens")
    assert summary.num_images == 5 and len(shards) == 5  # 9 files - 3 bad headers - 1 truncated, none twice
    assert sorted(shards.sources) == ["a_good.png", "b_gray.png", "c_rgba.png", "d_cmyk.jpg", "e_16bit.png"]
    assert [r.split(": ")[0].rsplit("/", 1)[1] for r in summary.skipped] == [
        "f_truncated.jpg",
        "g_empty.png",
        "h_text.jpg",
        "i_huge.png",
    ]  # fmt: skip  (3 bad headers, 1 decode failure: skipped, not replaced)
    assert not [w for w in caught if "decode" in str(w.message)]
    data = ImageDataModule(DataConfig(train=str(messy), size=32, batch_size=2, num_workers=1))
    with pytest.warns(UserWarning, match="skipped 3 of 9"):
        data.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = next(iter(data.train_dataloader()))
    assert batch.shape == (2, 3, 32, 32)


def test_hostile_headers_and_elongated_images_are_skipped_and_named(tmp_path):
    from magvit2.data.images import MAX_ASPECT, scan_images

    from .hostile import write_bad_headers, write_photos, write_wide_png

    bad = write_bad_headers(tmp_path)  # PIL raises ValueError / OSError on these while reading the header
    write_wide_png(tmp_path / "wide.png")  # 4 KB; 256 x 512,000,000 pixels once its shorter side is resized to 256
    write_wide_png(tmp_path / "tall.png", width=1, height=MAX_ASPECT + 1)
    write_wide_png(tmp_path / "panorama.png", width=MAX_ASPECT, height=1)  # at the limit: kept
    write_photos(tmp_path, ["photo.png"])
    with pytest.warns(UserWarning) as caught:
        good = usable_images(list_images(tmp_path))
    assert [p.name for p in good] == ["panorama.png", "photo.png"]
    message = str(caught[0].message)
    assert len(caught) == 1 and message.startswith("skipped 7 of 9 image files")
    assert "huge_text.png: ValueError: Decompressed data too large" in message
    assert "bad_maxval.ppm: ValueError: maxval" in message
    good, reasons = scan_images(list_images(tmp_path))
    assert f"{tmp_path / 'wide.png'}: 2000000x1 has an aspect ratio above {MAX_ASPECT}:1" in reasons
    assert sorted(r.split(": ")[0].rsplit("/", 1)[1] for r in reasons) == sorted([*bad, "tall.png", "wide.png"])
    with pytest.raises(UnreadableImage, match="aspect ratio"):
        load_image(tmp_path / "wide.png", size=32)  # the load path refuses it too, before decoding


def _without_root_override() -> list[str]:
    """A command prefix that drops root's permission override (root reads a chmod 000 folder), or [] for a user."""
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a chmod 000 folder cannot be made unreadable")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps]


def test_an_unreadable_sub_folder_is_named_not_skipped(tmp_path):
    import subprocess
    import sys

    from .hostile import write_photos

    for label in ("ant", "bee", "cat"):
        write_photos(tmp_path / "data" / label, ["0.png"])
    (tmp_path / "data" / "bee").chmod(0)
    code = "from magvit2.data.images import list_images, folder_labels; print(folder_labels(list_images('data'))[0])"
    try:
        run = subprocess.run([*_without_root_override(), sys.executable, "-c", code], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        (tmp_path / "data" / "bee").chmod(0o755)
    # before: ['ant', 'cat'], so cat got bee's id 1
    assert run.returncode == 1 and "['ant', 'cat']" not in run.stdout
    last = run.stderr.strip().splitlines()[-1]
    assert last == "ValueError: cannot list the folder data/bee under data: Permission denied; fix or remove it"
