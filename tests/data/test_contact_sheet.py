"""Contact sheets (the one picture of many images: tiles enlarged to >= 64 px, grey gaps, row labels) and uint8
levels: the one conversion every writer of images uses. Sheets are checked as read back from a PNG."""

import numpy as np
import pytest
import torch
from PIL import Image

from magvit2.data.images import SHEET_GAP, SHEET_GAP_VALUE, contact_sheet, to_tensor, to_uint8, uint8_levels


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


def _official_sampler(x: torch.Tensor) -> np.ndarray:
    """SEED-Voken sample.py `chw_to_pillow` (batched): (255 * rescale(x)).clip(0, 255).astype(np.uint8) in numpy."""
    x = x.float().movedim(-3, -1).numpy()
    return (255 * ((x + 1.0) / 2.0)).clip(0, 255).astype(np.uint8)


def _official_evaluation(x: torch.Tensor) -> np.ndarray:
    """SEED-Voken evaluation_image.py: clamp(-1, 1), (x + 1) / 2, then (x * 255.0).to(torch.uint8)."""
    x = (x.float().clamp(-1, 1) + 1) / 2
    return (x * 255.0).movedim(-3, -1).to(torch.uint8).numpy()


def test_uint8_conversion_is_the_official_samplers_and_evaluations():
    g = torch.Generator().manual_seed(0)
    edges = torch.tensor([-1.0, 1.0, 0.0, -1.5, 3.0, -0.0, 1e-8, -1e-8, 0.999, -0.999])
    levels = torch.arange(256.0) / 127.5 - 1.0  # float32 images of every level, and the points between levels
    near = torch.cat([levels, (torch.arange(256.0) + 0.5) / 127.5 - 1.0, torch.nextafter(levels, levels + 1)])
    values = torch.cat([edges, near, torch.rand(4096, generator=g) * 2.4 - 1.2])
    x = values.view(-1, 1, 1, 1).expand(-1, 3, 1, 2)  # (N, 3, 1, 2) images
    got = to_uint8(x)
    assert np.array_equal(got, _official_sampler(x))
    assert np.array_equal(got, _official_evaluation(x))
    assert np.array_equal(uint8_levels(x).movedim(-3, -1).numpy(), got)
    # truncation, not rounding: 0.999 -> 254.87 -> 254 (rounding gave 255)
    assert uint8_levels(torch.tensor([-1.0, 0.0, 0.999, 1.0, -3.0, 7.0])).tolist() == [0, 127, 254, 255, 0, 255]
    assert to_uint8(torch.zeros(3, 1, 2)).shape == (1, 2, 3)


def test_to_tensor_is_the_official_pixel_scaling_and_levels_come_back_as_officially():
    """Pixels scale as the official data pipeline's (image / 127.5 - 1.0).astype(np.float32) (float64 arithmetic);
    back to uint8, levels 1..95 come back one lower, as in the official evaluation's originals."""
    pixels = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 256, 3)
    x = to_tensor(pixels)  # (3, 1, 256)
    official = (pixels / 127.5 - 1.0).astype(np.float32)
    assert np.array_equal(x.permute(1, 2, 0).numpy(), official)
    back = to_uint8(x)[0, :, 0].astype(int)
    assert np.array_equal(back, _official_evaluation(torch.from_numpy(official).permute(2, 0, 1))[0, :, 0])
    assert np.array_equal(np.nonzero(back != np.arange(256))[0], np.arange(1, 96))
    assert (np.arange(256) - back).max() == 1
