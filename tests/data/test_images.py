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
    assert sum("skipped 3 of 9" in str(w.message) for w in caught) == 1
    data = ImageDataModule(DataConfig(train=str(messy), size=32, batch_size=2, num_workers=1))
    with pytest.warns(UserWarning, match="skipped 3 of 9"):
        data.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = next(iter(data.train_dataloader()))
    assert batch.shape == (2, 3, 32, 32)
