"""Image-to-image tasks on overlap tiles: what denoising and upscaling share.

An image of any size is decoded, kept gray (L) or made RGB, and cut into tiles of
``input.height x input.width`` whose outer ``margin`` pixels are context only
(service/tiling.py). Each tile is one uint8 sample, so a request is as many
samples as its image has tiles and the tiles of concurrent requests share
batches. ``predict_batch`` scales a batch to the model's floats, runs it and hands
back each tile's centre as uint8 pixels, ``scale`` times larger for an upscaler;
postprocess stitches the centres into the answer, a PNG.

Colour: grayscale uploads (L, LA, 16-bit, I, F) come back as L, every other mode
as RGB, with transparent pixels composited on white (imaging.to_mode). A 3-channel
model sees a gray image as three equal channels and returns their mean; a
1-channel model processes a colour image as three gray planes.

A task says how its manifest gives the margin and the scale (``tiling_of``), and
what the model takes besides the tile (``model_inputs``: a denoiser's noise map).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Literal

import numpy as np
from PIL import Image

from service import imaging, tiling
from service.admission import Cost
from service.errors import BadRequest, PayloadTooLarge
from service.runtimes.base import Agreement, Prepared, Runtime

GRAY_MODES = frozenset({"1", "L", "LA", "La", "F", *imaging.SIXTEEN_BIT_MODES})


@dataclasses.dataclass(frozen=True)
class Tiled:
    """What postprocess needs: where the tiles lie and the output mode."""

    grid: tiling.TileGrid
    mode: Literal["RGB", "L"]


class TiledImageRuntime(Runtime):
    body = "image"

    def __init__(self, name, version, model, manifest, *args, **kwargs) -> None:
        super().__init__(name, version, model, manifest, *args, **kwargs)
        self.margin, self.scale = self.tiling_of(manifest)
        self.mean = np.asarray(manifest.input.mean, np.float32)
        self.std = np.asarray(manifest.input.std, np.float32)

    @classmethod
    @abc.abstractmethod
    def tiling_of(cls, manifest) -> tuple[int, int]:
        """(margin in input pixels, output pixels per input pixel) from a manifest."""

    @staticmethod
    def check_channels(model, spec) -> None:
        """At load: the model's image input has the manifest's channels."""
        if model.inputs[0].shape[-1] != spec.channels:
            raise ValueError(
                f"the model's image input has {model.inputs[0].shape[-1]} channels, "
                f"the manifest says {spec.channels}"
            )

    # -- samples ---------------------------------------------------------------
    def blank_samples(self, size: int) -> np.ndarray:
        return np.zeros((size, *self.sample_shape), np.uint8)

    def tiles(self, samples: np.ndarray) -> np.ndarray:
        """The uint8 tiles of a batch of samples (a structured sample's tile field)."""
        return samples

    def decode(self, data: bytes) -> Image.Image:
        """The upload, decoded (413 past the server's pixel limit)."""
        return self.opening(imaging.decode_image, data)

    def opening(self, open_image, data: bytes):
        """``open_image`` (imaging's decode_image or decoded_size) under this task's limit."""
        return open_image(data, self.max_image_pixels)

    # -- admission -------------------------------------------------------------
    def cost(self, request) -> Cost:
        return self.image_cost(request.image)

    def encoded_images_cost(self, images: np.ndarray) -> Cost:
        """Images sent as a tensor: each one's cost, made RGB (as ``_join_tensors`` does)."""
        # Their total against the queue is admission's check (Runtime._admit).
        return sum((self.image_cost(data, colour=True) for data in images), Cost(0, 0))

    def image_cost(self, data: bytes, colour: bool = False) -> Cost:
        """An upload's tiles, and the pixels it holds: the image, its tiles, the answer."""
        width, height, mode = self.opening(imaging.decoded_size, data)
        gray = mode in GRAY_MODES and not colour
        planes = 3 if self.manifest.input.channels == 1 and not gray else 1
        grid = self.grid(height, width, planes)
        self.check_queue(grid.num_tiles, f"a {width}x{height} image")
        spec = self.manifest.input
        tile_pixels = grid.num_tiles * spec.height * spec.width
        return Cost(width * height * (1 + self.scale**2) + tile_pixels, grid.num_tiles)

    def read_image(self, data: bytes) -> tuple[np.ndarray, Literal["RGB", "L"]]:
        """The upload's pixels, (height, width) for gray or (height, width, 3), and the
        mode the answer comes back in."""
        image = self.decode(data)
        mode = "L" if image.mode in GRAY_MODES else "RGB"
        return np.asarray(imaging.to_mode(image, 1 if mode == "L" else 3)), mode

    def cut(self, pixels: np.ndarray) -> tuple[np.ndarray, tiling.TileGrid]:
        """The samples ``pixels`` are cut into, and the grid they lie on."""
        planes = _planes(pixels, self.manifest.input.channels)
        grid = self.grid(planes.shape[1], planes.shape[2], planes.shape[0])
        samples = self.blank_samples(grid.num_tiles)
        tiling.cut_tiles(planes, grid, self.tiles(samples))
        return samples, grid

    def grid(self, height: int, width: int, planes: int) -> tiling.TileGrid:
        spec = self.manifest.input
        return tiling.TileGrid(
            height, width, planes, spec.height, spec.width, self.margin, self.scale
        )

    def check_queue(self, num_tiles: int, what: str) -> None:
        if num_tiles > self.batching.max_queue:
            raise PayloadTooLarge(
                f"{what} is {num_tiles} tiles for model {self.name!r}, "
                f"which queues at most {self.batching.max_queue}"
            )

    # -- the model -------------------------------------------------------------
    def model_inputs(self, pixels: np.ndarray, samples: np.ndarray) -> Any:
        """What the model is called with: the scaled tiles (and what else it takes)."""
        return pixels

    def predict_batch(self, samples: np.ndarray) -> np.ndarray:
        """The centres of a batch of tiles, as the model returns them, in uint8 pixels."""
        pixels = self.tiles(samples).astype(np.float32)
        pixels -= self.mean
        pixels /= self.std
        outputs = np.asarray(self.engine.predict(self.model_inputs(pixels, samples)))
        crop = self.margin * self.scale
        centres = outputs[:, crop : outputs.shape[1] - crop, crop : outputs.shape[2] - crop]
        levels = centres * self.std
        levels += self.mean
        return np.clip(np.rint(levels, out=levels), 0, 255, out=levels).astype(np.uint8)

    def agreement(self, reference, candidate, tolerance: float) -> Agreement:
        """Pixels within 50 dB PSNR of Keras's (a mean square error of 0.65 levels)."""
        error = float(np.mean((reference.astype(np.float64) - candidate) ** 2))
        psnr = 10 * np.log10(255**2 / error) if error else float("inf")
        return Agreement(error <= 0.65 * tolerance, f"{psnr:.1f} dB PSNR against Keras's output")

    # -- the answer ------------------------------------------------------------
    def stitch(self, outputs: np.ndarray, tiled: Tiled) -> Image.Image:
        """One request's tile centres as the answer's image, in its mode."""
        if tiled.mode == "L" and outputs.shape[-1] == 3:
            # The rounded mean of the three channels: exact for equal ones.
            outputs = ((outputs.sum(axis=-1, dtype=np.uint16) + 1) // 3).astype(np.uint8)[..., None]
        return _as_image(tiling.stitch_tiles(outputs, tiled.grid), tiled.mode)

    # -- encoded images as tensors (the standard protocols) --------------------
    def _join_tensors(self, inputs: dict[str, np.ndarray]) -> Prepared:
        """Numbers are tiles, as samples are. With ``takes_encoded_images``, a BYTES tensor
        holds whole images of any size, all of one size (their outputs form one tensor),
        each answered as its whole output image, uint8 RGB: a tile is no unit a client of
        the protocols should have to know of."""
        images = self._encoded_input(inputs)
        if images is None or not self.takes_encoded_images:
            return super()._join_tensors(inputs)
        if images.ndim != 1 or not len(images):
            raise BadRequest("encoded images come as a list of one or more")
        cuts = [self.cut(np.asarray(imaging.to_mode(self.decode(data), 3))) for data in images]
        sizes = sorted({(grid.out_width, grid.out_height) for _, grid in cuts})
        if len(sizes) > 1:
            raise BadRequest(
                f"images sent together must be of one size, as their outputs form one tensor; "
                f"these would come back as {', '.join(f'{w}x{h}' for w, h in sizes)}"
            )
        return Prepared(np.concatenate([samples for samples, _ in cuts]), [g for _, g in cuts])

    def _split_tensors(self, outputs: np.ndarray, inputs: Any, grids: Any) -> dict:
        if grids is None:
            return super()._split_tensors(outputs, inputs, grids)
        images, start = [], 0
        for grid in grids:
            images.append(tiling.stitch_tiles(outputs[start : start + grid.num_tiles], grid))
            start += grid.num_tiles
        return {self.tensor_outputs[0].name: np.stack(images)}


def _as_image(pixels: np.ndarray, mode: str) -> Image.Image:
    """(height, width, 1 or 3) uint8 as an L or RGB image (an RGB one is Pillow's own copy)."""
    return Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)


def _planes(pixels: np.ndarray, channels: int) -> np.ndarray:
    """The images to tile, (planes, height, width, 1 or 3), views of ``pixels``."""
    if pixels.ndim == 2:
        return pixels[np.newaxis, :, :, np.newaxis]
    if channels == 1:  # colour through a gray model: each channel is a plane
        return pixels.transpose(2, 0, 1)[:, :, :, np.newaxis]
    return pixels[np.newaxis]
