"""Segmentation: an image in, a class mask of the same size out (PNG, one index per class)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydantic
from PIL import Image

from service import imaging
from service.admission import Cost
from service.runtimes.base import Agreement, PngBody, PngImage, Prepared, Runtime, forward_blank

MAX_CLASSES = 256  # one byte per mask pixel


class SegmentParams(pydantic.BaseModel):
    overlay: bool = pydantic.Field(
        False, description="Also return the mask blended over the image (PNG)."
    )


@dataclasses.dataclass(frozen=True)
class SegmentRequest:
    image: bytes
    overlay: bool = False


class SegmentResponse(pydantic.BaseModel):
    model: str
    version: int
    width: int
    height: int
    labels: list[str] = pydantic.Field(description="Class names; a mask pixel's value indexes it.")
    mask: PngImage = pydantic.Field(
        description="Palette PNG of the input's size: each pixel's value is its class index."
    )
    class_fractions: dict[str, float] = pydantic.Field(
        description="Share of the image's pixels per class, for every class present."
    )
    overlay: PngImage | None = pydantic.Field(
        None, description="With ?overlay=true: the mask's colours blended over the image."
    )

    def as_png(self) -> PngBody:
        """``Accept: image/png``: the mask PNG alone."""
        return PngBody(self.mask.png)


class SegmentationRuntime(Runtime):
    task = "segmentation"
    verb = "segment"
    summary = "Segment an image: a class per pixel, as a mask PNG of the image's size."
    Params = SegmentParams
    body = "image"
    Response = SegmentResponse
    takes_encoded_images = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.palette = imaging.class_palette(len(self.manifest.labels))

    @classmethod
    def make_request(cls, params: SegmentParams, images: list[bytes]) -> SegmentRequest:
        return SegmentRequest(images[0], params.overlay)

    @classmethod
    def validate(cls, model, manifest) -> None:
        if len(manifest.labels) > MAX_CLASSES:
            raise ValueError(f"a PNG mask holds at most {MAX_CLASSES} classes")
        outputs = forward_blank(model, manifest)
        if outputs.ndim != 4 or outputs.shape[-1] != len(manifest.labels):
            raise ValueError(
                f"the model's outputs have shape {(None, *outputs.shape[1:])}, but segmentation "
                f"needs (batch, height, width, {len(manifest.labels)} classes)"
            )

    def agreement(self, reference, candidate, tolerance: float) -> Agreement:
        """The same class for 99.5% of pixels."""
        same = float((reference.argmax(-1) == candidate.argmax(-1)).mean())
        return Agreement(
            same >= 1 - 0.005 * tolerance, f"masks agree on {100 * same:.3f}% of pixels"
        )

    def cost(self, request: SegmentRequest) -> Cost:
        """The decoded image, its mask at full size and, if asked, its overlay."""
        width, height, _ = imaging.decoded_size(request.image, self.max_image_pixels)
        return Cost(width * height * (3 if request.overlay else 2))

    def preprocess(self, request: SegmentRequest) -> Prepared:
        spec = self.manifest.input
        # Decoded at full size (no JPEG draft): the mask and overlay have the input's size.
        image = imaging.to_mode(imaging.decode_image(request.image, self.max_image_pixels), 3)
        sample = imaging.normalise(imaging.resize(image, spec.width, spec.height), spec)
        return Prepared(sample[np.newaxis], context=image)

    def postprocess(
        self, outputs: np.ndarray, request: SegmentRequest, image: Image.Image
    ) -> SegmentResponse:
        classes = np.argmax(outputs[0], axis=-1).astype(np.uint8)
        mask = imaging.mask_image(classes, self.palette)
        mask = mask.resize(image.size, Image.Resampling.NEAREST)
        counts = np.bincount(np.asarray(mask).ravel(), minlength=len(self.manifest.labels))
        total = image.width * image.height
        return SegmentResponse(
            model=self.name,
            version=self.version,
            width=image.width,
            height=image.height,
            labels=self.manifest.labels,
            mask=PngImage.of(mask),
            class_fractions={
                label: round(float(count / total), 6)
                for label, count in zip(self.manifest.labels, counts, strict=False)
                if count
            },
            overlay=PngImage.of(imaging.overlay(image, mask)) if request.overlay else None,
        )
