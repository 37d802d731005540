"""Contact sheets (the one picture of many images: tiles enlarged to >= 64 px, grey gaps, row labels) and uint8
levels: the one conversion every writer of images uses. Sheets are checked as read back from a PNG."""

import numpy as np
import pytest
import torch
from PIL import Image

from magvit2.data.images import SHEET_GAP, SHEET_GAP_VALUE, contact_sheet, to_uint8, uint8_levels


def _png_round_trip(sheet: np.ndarray, tmp_path) -> np.ndarray:
    Image.fromarray(sheet).save(tmp_path / "sheet.png")
    with Image.open(tmp_path / "sheet.png") as img:
        return np.asarray(img.convert("RGB"))


def _tiles(images: np.ndarray, sheet: np.ndarray, per_row: int, tile: int, margin: int = 0):
    """(mask of tile pixels, [(tile pixels in the sheet, the image enlarged)])."""
    mask = np.zeros(sheet.shape[:2], dtype=bool)
    pairs = []
    factor = tile // images.shape[1]
    for i, image in enumerate(images):
        r, c = divmod(i, per_row)
        top, left = SHEET_GAP + r * (tile + SHEET_GAP), margin + SHEET_GAP + c * (tile + SHEET_GAP)
        mask[top : top + tile, left : left + tile] = True
        pairs.append((sheet[top : top + tile, left : left + tile], image.repeat(factor, 0).repeat(factor, 1)))
    return mask, pairs


@pytest.mark.parametrize("size", [8, 32], ids=lambda s: f"{s}x{s}")
def test_small_images_are_enlarged_to_64_px_tiles_with_grey_gaps(size, tmp_path):
    images = np.random.default_rng(size).integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    sheet = _png_round_trip(contact_sheet(images, 3), tmp_path)
    tile = 64  # 8 px x8, 32 px x2
    assert sheet.shape == (2 * tile + 3 * SHEET_GAP, 3 * tile + 4 * SHEET_GAP, 3)
    mask, pairs = _tiles(images, sheet, 3, tile)
    for got, want in pairs:
        assert np.array_equal(got, want)  # nearest neighbour: every pixel an exact copy
    assert (sheet[~mask] == SHEET_GAP_VALUE).all()  # the gaps, the border and the empty sixth place


def test_large_images_keep_their_size_and_odd_shapes_take_an_integer_factor():
    big = np.zeros((2, 256, 256, 3), dtype=np.uint8)
    assert contact_sheet(big, 2).shape == (256 + 2 * SHEET_GAP, 2 * 256 + 3 * SHEET_GAP, 3)
    wide = np.zeros((1, 48, 80, 3), dtype=np.uint8)  # the shorter side 48 -> x2
    assert contact_sheet(wide, 4).shape == (96 + 2 * SHEET_GAP, 160 + 2 * SHEET_GAP, 3)


def test_row_labels_are_drawn_in_a_left_margin(tmp_path):
    images = np.full((4, 16, 16, 3), 255, dtype=np.uint8)
    plain = contact_sheet(images, 2)
    sheet = _png_round_trip(contact_sheet(images, 2, row_labels=["input", "reconstruction"]), tmp_path)
    margin = sheet.shape[1] - plain.shape[1]
    assert sheet.shape[0] == plain.shape[0] and margin > 40  # room for "reconstruction"
    mask, pairs = _tiles(images, sheet, 2, 64, margin)
    assert all(np.array_equal(got, want) for got, want in pairs)
    for r in range(2):  # ink in each row's band of the margin, nowhere else outside the tiles
        band = sheet[SHEET_GAP + r * (64 + SHEET_GAP) : (r + 1) * (64 + SHEET_GAP), :margin]
        assert (band != SHEET_GAP_VALUE).any(axis=2).sum() > 20
    assert (sheet[~mask][:, 0] != SHEET_GAP_VALUE).sum() == (sheet[:, :margin, 0] != SHEET_GAP_VALUE).sum()
    long = "a" * 60  # cut to 24 characters
    width = contact_sheet(images[:2], 2, row_labels=[long]).shape[1]
    assert width == contact_sheet(images[:2], 2, row_labels=["a" * 21 + "..."]).shape[1]


def test_contact_sheet_errors():
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="2 row labels for 1 rows"):
        contact_sheet(images, 3, row_labels=["a", "b"])
    with pytest.raises(ValueError, match="uint8"):
        contact_sheet(images.astype(np.float32), 3)
    with pytest.raises(ValueError, match="per_row must be >= 1"):
        contact_sheet(images, 0)


def test_uint8_levels_round_trip_pixels_and_clamp():
    pixels = torch.arange(256, dtype=torch.float32)
    x = pixels / 127.5 - 1.0
    assert torch.equal(uint8_levels(x), pixels.to(torch.uint8))
    assert uint8_levels(torch.tensor([-3.0, 7.0])).tolist() == [0, 255]
    assert to_uint8(torch.zeros(3, 1, 2)).shape == (1, 2, 3)
