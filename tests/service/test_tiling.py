"""Overlap-tile cutting and stitching, without a model."""

from __future__ import annotations

import numpy as np
import pytest

from service import tiling


def grid_for(planes: np.ndarray, tile: int = 10, margin: int = 3) -> tiling.TileGrid:
    count, height, width = planes.shape[:3]
    return tiling.TileGrid(height, width, count, tile, tile, margin)


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (4, 4), (5, 13), (23, 8)])
def test_tiles_show_the_image_mirrored_as_np_pad_symmetric(size):
    planes = np.random.default_rng(0).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    grid = grid_for(planes)
    tiles = np.empty((grid.num_tiles, 10, 10, 3), np.uint8)
    tiling.cut_tiles(planes, grid, tiles)
    bottom = grid.rows * grid.centre_height - size[0] + 3
    right = grid.cols * grid.centre_width - size[1] + 3
    padded = np.pad(planes, [(0, 0), (3, bottom), (3, right), (0, 0)], mode="symmetric")
    for index, (plane, top, left) in enumerate(grid.positions()):
        assert np.array_equal(tiles[index], padded[plane, top : top + 10, left : left + 10])


def test_stitching_the_centres_rebuilds_the_image():
    planes = np.random.default_rng(1).integers(0, 256, (3, 17, 30, 1), dtype=np.uint8)
    grid = grid_for(planes)
    assert (grid.centre_height, grid.rows, grid.cols, grid.num_tiles) == (4, 5, 8, 120)
    tiles = np.empty((grid.num_tiles, 10, 10, 1), np.uint8)
    tiling.cut_tiles(planes, grid, tiles)
    image = tiling.stitch_tiles(tiles[:, 3:7, 3:7], grid)
    assert image.shape == (17, 30, 3)  # plane p fills channel p
    assert np.array_equal(image, planes[..., 0].transpose(1, 2, 0))


def test_a_one_channel_plane_fills_every_channel_of_a_tile():
    planes = np.arange(12, dtype=np.uint8).reshape(1, 3, 4, 1)
    grid = grid_for(planes, tile=6, margin=1)
    tiles = np.empty((grid.num_tiles, 6, 6, 3), np.uint8)
    tiling.cut_tiles(planes, grid, tiles)
    assert (tiles == tiles[..., :1]).all() and grid.num_tiles == 1
    assert np.array_equal(tiles[0, 1:4, 1:5, 0], planes[0, :, :, 0])
