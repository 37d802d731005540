"""Picture grids and uint8 levels: the one conversion every writer of images uses."""

import numpy as np
import torch

from magvit2.data.images import grid, to_uint8, uint8_levels


def test_grid_places_images_row_major_and_fills_a_short_row():
    images = np.stack([np.full((2, 3, 3), i, dtype=np.uint8) for i in range(5)])
    g = grid(images, 2)
    assert g.shape == (3 * 2, 2 * 3, 3)
    assert g[0, 0, 0] == 0 and g[0, 3, 0] == 1 and g[2, 0, 0] == 2 and g[4, 0, 0] == 4
    assert (g[4:, 3:] == 0).all()  # the missing sixth image


def test_grid_frames_each_image():
    images = np.full((4, 2, 2, 3), 200, dtype=np.uint8)
    g = grid(images, 4, pad=1, pad_value=64)
    assert g.shape == (4, 16, 3)
    assert (g[0] == 64).all() and (g[1, 1:3] == 200).all() and g[1, 3, 0] == 64


def test_uint8_levels_round_trip_pixels_and_clamp():
    pixels = torch.arange(256, dtype=torch.float32)
    x = pixels / 127.5 - 1.0
    assert torch.equal(uint8_levels(x), pixels.to(torch.uint8))
    assert uint8_levels(torch.tensor([-3.0, 7.0])).tolist() == [0, 255]
    assert to_uint8(torch.zeros(3, 1, 2)).shape == (1, 2, 3)
