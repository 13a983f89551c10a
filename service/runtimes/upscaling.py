"""Upscaling (super-resolution): an image of any size in, the image ``scale`` times larger
out (PNG).

The model is fully convolutional: (batch, h, w, channels) in, (batch, scale * h,
scale * w, channels) out, both scaled as ``manifest.input`` says (pixel = output *
std + mean). It runs on fixed low-resolution tiles of ``input.height x
input.width`` whose outer ``upscaling.margin`` input pixels are context only
(service/runtimes/tiled.py, which denoising shares): each tile's centre comes back
``scale`` times larger, placed at ``scale`` times its position. So a request is as
many samples as its image has tiles, the tiles of concurrent requests share
batches, and where the margin covers the model's receptive field the answer equals
the model run on the whole image at once.

Limits: the server's ``max_image_pixels`` bounds the answer as well as the upload:
an upload may hold at most max_image_pixels / scale² pixels (2.5 million for 4x at
the default 40 million), so that no image the server makes is larger than the
largest it decodes; beyond that, 413. The tiles must fit the model's queue too.

Colour, as for every tiled task: grayscale uploads come back as L, every other
mode as RGB; a 3-channel model sees a gray image as three equal channels and
returns their mean; a 1-channel model upscales a colour image as three gray planes.
Through the standard protocols, a BYTES tensor of encoded images (of one size) is
answered with the upscaled images as uint8 RGB; numbers are tiles, as samples are.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pydantic

from service.errors import PayloadTooLarge
from service.runtimes.base import PngBody, PngImage, Prepared, forward_blank
from service.runtimes.tiled import Tiled, TiledImageRuntime


@dataclasses.dataclass(frozen=True)
class UpscaleRequest:
    image: bytes


class UpscaleResponse(pydantic.BaseModel):
    model: str
    version: int
    width: int = pydantic.Field(description="The upscaled image's width: scale x the input's.")
    height: int = pydantic.Field(description="The upscaled image's height: scale x the input's.")
    scale: int = pydantic.Field(description="Output pixels per input pixel, along each axis.")
    mode: Literal["RGB", "L"] = pydantic.Field(description="L for grayscale inputs, else RGB.")
    tiles: int = pydantic.Field(description="Model samples the image was cut into.")
    image: PngImage = pydantic.Field(description="The upscaled image.")

    def as_png(self) -> PngBody:
        """``Accept: image/png``: the upscaled PNG alone."""
        return PngBody(self.image.png)


class UpscalingRuntime(TiledImageRuntime):
    task = "upscaling"
    verb = "upscale"
    summary = (
        "Upscale an image of any size (super-resolution): the image scale times larger, as a PNG."
    )
    Response = UpscaleResponse
    takes_encoded_images = True

    @classmethod
    def tiling_of(cls, manifest) -> tuple[int, int]:
        return manifest.upscaling.margin, manifest.upscaling.scale

    @classmethod
    def make_request(cls, params: pydantic.BaseModel, images: list[bytes]) -> UpscaleRequest:
        return UpscaleRequest(images[0])

    @classmethod
    def validate(cls, model, manifest) -> None:
        """One image input of the manifest's channels, and tiles out ``scale`` times larger."""
        spec, scale = manifest.input, manifest.upscaling.scale
        if len(model.inputs) != 1:
            raise ValueError(
                f"an upscaler takes one input, the image; the model has {len(model.inputs)}"
            )
        cls.check_channels(model, spec)
        upscaled = forward_blank(model, manifest)
        wanted = (scale * spec.height, scale * spec.width, spec.channels)
        if upscaled.shape[1:] != wanted:
            raise ValueError(
                f"the model turned tiles of shape {(spec.height, spec.width, spec.channels)} "
                f"into {upscaled.shape[1:]}; with scale {scale} they must come out {wanted}"
            )

    def opening(self, open_image, data: bytes):
        """The upload opened, if its upscaled image keeps within the server's pixel limit."""
        try:
            return open_image(data, self.max_image_pixels // self.scale**2)
        except PayloadTooLarge as error:
            raise PayloadTooLarge(
                f"{error.message}: model {self.name!r} upscales {self.scale}x, and an upscaled "
                f"image may hold at most {self.max_image_pixels} pixels (max_image_pixels)"
            ) from None

    def preprocess(self, request: UpscaleRequest) -> Prepared:
        pixels, mode = self.read_image(request.image)
        samples, grid = self.cut(pixels)
        return Prepared(samples, Tiled(grid, mode))

    def postprocess(
        self, outputs: np.ndarray, request: UpscaleRequest, tiled: Tiled
    ) -> UpscaleResponse:
        image = self.stitch(outputs, tiled)
        return UpscaleResponse(
            model=self.name,
            version=self.version,
            width=image.width,
            height=image.height,
            scale=self.scale,
            mode=tiled.mode,
            tiles=tiled.grid.num_tiles,
            image=PngImage.of(image),
        )
