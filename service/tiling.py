"""Overlap-tile: cut an image of any size into fixed-size tiles, stitch their centres back.

A tile is ``tile_height x tile_width``; its outer ``margin`` pixels are context for
the model and only its centre reaches the output. Tiles step by their centre size,
so the centres cover the image exactly once: no seams and nothing to blend, and
where the margin covers the model's receptive field the stitched result equals
the model run on the whole image at once. Outside the image, pixels are mirrored
("symmetric": the edge pixel repeats, then the image reflects), which also works
for a one-pixel-wide image and for margins wider than the image.

A model may return each tile ``scale`` times larger (super-resolution): the grid
is laid out on the input, and each centre comes back as ``scale * centre`` pixels
placed at ``scale * top, scale * left`` of an output ``scale`` times the input's size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Where the tiles of ``planes`` images of ``height x width`` lie."""

    height: int
    width: int
    planes: int  # images tiled together (a colour image's planes for a one-channel model)
    tile_height: int
    tile_width: int
    margin: int
    scale: int = 1  # output pixels per input pixel, per axis

    @property
    def out_height(self) -> int:
        return self.scale * self.height

    @property
    def out_width(self) -> int:
        return self.scale * self.width

    @property
    def centre_height(self) -> int:
        return self.tile_height - 2 * self.margin

    @property
    def centre_width(self) -> int:
        return self.tile_width - 2 * self.margin

    @property
    def rows(self) -> int:
        return -(-self.height // self.centre_height)

    @property
    def cols(self) -> int:
        return -(-self.width // self.centre_width)

    @property
    def num_tiles(self) -> int:
        return self.planes * self.rows * self.cols

    def positions(self) -> Iterator[tuple[int, int, int]]:
        """(plane, top, left) of each tile's centre in the image, in tile order."""
        for plane in range(self.planes):
            for row in range(self.rows):
                for col in range(self.cols):
                    yield plane, row * self.centre_height, col * self.centre_width


def cut_tiles(planes: np.ndarray, grid: TileGrid, out: np.ndarray) -> None:
    """Write the tiles of ``planes`` (planes, height, width, channels) into ``out``.

    ``out`` is (num_tiles, tile_height, tile_width, channels or a multiple: a
    one-channel plane is repeated into every channel).
    """
    margin = grid.margin
    # Row and column of the image that each row and column of the padded image shows.
    rows = _mirror(np.arange(-margin, grid.rows * grid.centre_height + margin), grid.height)
    cols = _mirror(np.arange(-margin, grid.cols * grid.centre_width + margin), grid.width)
    for index, (plane, top, left) in enumerate(grid.positions()):
        window = np.ix_(rows[top : top + grid.tile_height], cols[left : left + grid.tile_width])
        out[index] = planes[plane][window]


def stitch_tiles(centres: np.ndarray, grid: TileGrid) -> np.ndarray:
    """One image (out_height, out_width, planes x channels) from the tiles' centres.

    ``centres`` is (num_tiles, scale * centre_height, scale * centre_width, channels);
    plane ``p`` fills channels ``p * channels`` onwards. Centres past the image's edge
    are cut.
    """
    channels, scale = centres.shape[-1], grid.scale
    image = np.empty((grid.out_height, grid.out_width, grid.planes * channels), np.uint8)
    for index, (plane, top, left) in enumerate(grid.positions()):
        top, left = scale * top, scale * left
        bottom = min(top + scale * grid.centre_height, grid.out_height)
        right = min(left + scale * grid.centre_width, grid.out_width)
        block = centres[index, : bottom - top, : right - left]
        image[top:bottom, left:right, plane * channels : (plane + 1) * channels] = block
    return image


def _mirror(indices: np.ndarray, size: int) -> np.ndarray:
    """Indices outside 0..size-1 reflected back in, as np.pad's "symmetric" mode does."""
    indices = np.mod(indices, 2 * size)
    return np.where(indices >= size, 2 * size - 1 - indices, indices)
