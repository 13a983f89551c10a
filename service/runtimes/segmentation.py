"""Segmentation: an image in, a class mask of the same size out (PNG, one index per class)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydantic
from PIL import Image

from service import imaging
from service.runtimes.base import PngImage, Prepared, Runtime

MAX_CLASSES = 256  # one byte per mask pixel


@dataclasses.dataclass(frozen=True)
class SegmentRequest:
    image: bytes
    overlay: bool = False
    mask_only: bool = False  # respond with the mask PNG's bytes instead of JSON


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


class SegmentationRuntime(Runtime):
    task = "segmentation"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.palette = imaging.class_palette(len(self.manifest.labels))

    def check_outputs(self, outputs: np.ndarray, batch_size: int) -> None:
        super().check_outputs(outputs, batch_size)
        if len(self.manifest.labels) > MAX_CLASSES:
            raise ValueError(f"a PNG mask holds at most {MAX_CLASSES} classes")
        if outputs.ndim != 4 or outputs.shape[-1] != len(self.manifest.labels):
            raise ValueError(
                f"the model's outputs have shape {outputs.shape}, but segmentation needs "
                f"(batch, height, width, {len(self.manifest.labels)} classes)"
            )

    def preprocess(self, request: SegmentRequest) -> Prepared:
        spec = self.manifest.input
        # Decoded at full size (no JPEG draft): the mask and overlay have the input's size.
        image = imaging.to_mode(imaging.decode_image(request.image, self.max_image_pixels), 3)
        sample = imaging.normalise(imaging.resize(image, spec.width, spec.height), spec)
        return Prepared(sample[np.newaxis], context=image)

    def postprocess(
        self, outputs: np.ndarray, request: SegmentRequest, image: Image.Image
    ) -> SegmentResponse | bytes:
        classes = np.argmax(outputs[0], axis=-1).astype(np.uint8)
        mask = imaging.mask_image(classes, self.palette)
        mask = mask.resize(image.size, Image.Resampling.NEAREST)
        if request.mask_only:
            return imaging.encode_png(mask)
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
