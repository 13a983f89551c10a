"""Denoising: an image of any size in, the denoised image of the same size out (PNG).

The model is fully convolutional: (batch, h, w, channels) in, the same shape out,
both scaled as ``manifest.input`` says. It runs on fixed tiles of ``input.height x
input.width`` whose outer ``denoising.margin`` pixels are context only
(service/runtimes/tiled.py, which upscaling shares), so a request is as many
samples as its image has tiles and the tiles of concurrent requests share batches.
With ``denoising.sigma_input`` the model takes a second input, a noise map holding
sigma / 255 at every pixel; a sample is then a structured row (tile, sigma), so
that requests with different sigmas share a batch too.

Colour, as for every tiled task: grayscale uploads come back as L, every other
mode as RGB; a 3-channel model sees a gray image as three equal channels and
returns their mean; a 1-channel model denoises a colour image as three gray planes.

Memory: samples are uint8 tiles, (tile / centre)² times the decoded image's bytes
(1.8x for 128-pixel tiles with 16-pixel margins); only one batch at a time is
float32, and predict_batch hands back the tiles' centres, as uint8. Serving one
request peaks at 6.5x the decoded image's bytes at most in numpy and Python
allocations, JSON response included: 5.5x measured for a noisy 4000x3000 photo
(tests/service/test_denoise_api.py), mostly the samples, the outputs and the PNG
with its base64. Pillow's own copies of the decoded and the denoised image come on
top, and TensorFlow's memory for one batch.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pydantic

from service.errors import BadRequest
from service.runtimes.base import PngBody, PngImage, Prepared
from service.runtimes.tiled import Tiled, TiledImageRuntime

MAX_SIGMA = 255.0
MAD_TO_SIGMA = 0.6745  # median absolute deviation of a unit Gaussian


class DenoiseParams(pydantic.BaseModel):
    sigma: float | None = pydantic.Field(
        None,
        ge=0,
        le=MAX_SIGMA,
        description=f"Noise standard deviation in pixel levels, 0 to {MAX_SIGMA:g}, for a model "
        "that takes one (default: estimated from the image). A blind model refuses it.",
    )


@dataclasses.dataclass(frozen=True)
class DenoiseRequest:
    image: bytes
    sigma: float | None = None  # pixel levels; None: estimated (models that take one)


@dataclasses.dataclass(frozen=True)
class DenoisedTiles(Tiled):
    """What postprocess needs: where the tiles lie, the output mode, the sigma used."""

    sigma: float | None = None


class DenoiseResponse(pydantic.BaseModel):
    model: str
    version: int
    width: int
    height: int
    mode: Literal["RGB", "L"] = pydantic.Field(description="L for grayscale inputs, else RGB.")
    sigma: float | None = pydantic.Field(
        description="Noise level the model was given (pixel levels), the client's or estimated; "
        "null for a blind model."
    )
    tiles: int = pydantic.Field(description="Model samples the image was cut into.")
    image: PngImage = pydantic.Field(description="The denoised image, of the input's size.")

    def as_png(self) -> PngBody:
        """``Accept: image/png``: the denoised PNG alone."""
        return PngBody(self.image.png)


class DenoisingRuntime(TiledImageRuntime):
    task = "denoising"
    verb = "denoise"
    summary = "Denoise an image of any size: the clean image, as a PNG of the same size."
    Params = DenoiseParams
    Response = DenoiseResponse

    def __init__(self, name, version, model, manifest, *args, **kwargs) -> None:
        super().__init__(name, version, model, manifest, *args, **kwargs)
        self.spec = manifest.denoising
        self.sample_dtype = (
            np.dtype([("tile", np.uint8, self.sample_shape), ("sigma", np.float32)])
            if self.spec.sigma_input
            else None
        )

    @classmethod
    def tiling_of(cls, manifest) -> tuple[int, int]:
        return manifest.denoising.margin, 1

    def blank_samples(self, size: int) -> np.ndarray:
        if self.sample_dtype is not None:
            return np.zeros(size, self.sample_dtype)
        return super().blank_samples(size)

    def tiles(self, samples: np.ndarray) -> np.ndarray:
        return samples if self.sample_dtype is None else samples["tile"]

    @classmethod
    def make_request(cls, params: DenoiseParams, images: list[bytes]) -> DenoiseRequest:
        return DenoiseRequest(images[0], params.sigma)

    @classmethod
    def validate(cls, model, manifest) -> None:
        """The inputs the manifest says, and tiles out of the shape they went in."""
        spec = manifest.input
        wanted = ["image", "noise_map"] if manifest.denoising.sigma_input else ["image"]
        if len(model.inputs) != len(wanted):
            raise ValueError(
                f"the manifest says sigma_input={manifest.denoising.sigma_input}, so the model "
                f"needs the inputs {wanted}, but it has {len(model.inputs)}"
            )
        cls.check_channels(model, spec)
        tile = np.zeros((1, spec.height, spec.width, spec.channels), np.float32)
        feed = [tile, tile[..., :1]] if manifest.denoising.sigma_input else tile
        denoised = np.asarray(model.predict_on_batch(feed))
        if denoised.shape != tile.shape:
            raise ValueError(
                f"the model turned tiles of shape {tile.shape[1:]} into {denoised.shape[1:]}; "
                "a denoiser's output must have its input's shape"
            )

    def given_sigma(self, sigma: float | None) -> float | None:
        if sigma is None:
            return None
        if not self.spec.sigma_input:
            raise BadRequest(
                f"model {self.name!r} is blind: it estimates the noise level itself and "
                "takes no sigma"
            )
        if not 0 <= sigma <= MAX_SIGMA:  # NaN fails this too
            raise BadRequest(f"sigma must be between 0 and {MAX_SIGMA:g} pixel levels, got {sigma}")
        return sigma

    def preprocess(self, request: DenoiseRequest) -> Prepared:
        sigma = self.given_sigma(request.sigma)
        pixels, mode = self.read_image(request.image)
        if self.spec.sigma_input and sigma is None:
            low, high = self.spec.sigma_range
            sigma = float(np.clip(estimate_sigma(pixels), low, high))
        samples, grid = self.cut(pixels)
        if sigma is not None:
            samples["sigma"] = sigma
        return Prepared(samples, DenoisedTiles(grid, mode, sigma))

    def model_inputs(self, pixels: np.ndarray, samples: np.ndarray):
        """The tiles, and a noise map of sigma / 255 for a model that takes one."""
        if self.sample_dtype is None:
            return pixels
        noise_map = np.empty((*pixels.shape[:3], 1), np.float32)
        noise_map[...] = samples["sigma"][:, None, None, None] / MAX_SIGMA
        return [pixels, noise_map]

    def postprocess(
        self, outputs: np.ndarray, request: DenoiseRequest, tiled: DenoisedTiles
    ) -> DenoiseResponse:
        image = self.stitch(outputs, tiled)
        return DenoiseResponse(
            model=self.name,
            version=self.version,
            width=image.width,
            height=image.height,
            mode=tiled.mode,
            sigma=None if tiled.sigma is None else round(tiled.sigma, 3),
            tiles=tiled.grid.num_tiles,
            image=PngImage.of(image),
        )


def estimate_sigma(pixels: np.ndarray) -> float:
    """Gaussian noise level of a uint8 image, in pixel levels: Donoho's MAD estimate.

    sigma = median(|HH|) / 0.6745, where HH = (a - b - c + d) / 2 over each 2x2 block
    is the finest diagonal Haar detail, which holds little besides noise. A colour
    image pools the detail of its three channels: a gray conversion would average
    their noise down to about two thirds.
    """
    height, width = pixels.shape[:2]
    even = pixels[: height - height % 2, : width - width % 2]
    if even.size == 0:
        return 0.0
    a, b, c, d = (even[row::2, col::2].astype(np.int16) for row in (0, 1) for col in (0, 1))
    return float(np.median(np.abs(a - b - c + d))) / 2 / MAD_TO_SIGMA
