"""Request bodies made from real photos, built once per process.

The photos are the ones bundled with scikit-image and scikit-learn (the same the
training scripts use), resized so their long side is each of ``SIZES`` and encoded
as JPEG and PNG. ``KERVE_LOADTEST_SIZES`` (say ``"64,128"``) picks other sizes.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZES = (224, 512, 1024)  # long side in pixels
DENOISE_SIZES = (256, 512)  # modest: a 1024-pixel photo is hundreds of tiles on a CPU
UPSCALE_SIZES = (64, 128)  # small photos, as upscaling gets: 4x makes them 256 and 512
NOISE_SIGMA = 25.0  # pixel levels, as the demo denoiser expects
NOISE_SEED = 0
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


@dataclass(frozen=True)
class Payload:
    """One encoded image: its bytes, media type and pixel size."""

    name: str
    body: bytes
    content_type: str
    width: int
    height: int


def sizes_from_env(variable: str, default: tuple[int, ...]) -> tuple[int, ...]:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    if not sizes or min(sizes) < 8:
        raise ValueError(f"{variable} must list sizes of at least 8 pixels, got {text!r}")
    return sizes


@functools.cache
def load_photos() -> dict[str, np.ndarray]:
    """The bundled photos as RGB uint8 arrays, by name (read once: each payload set is
    made from them, and locust makes three before its users start). Not to be changed."""
    import skimage.color
    import skimage.data
    import sklearn.datasets

    photos = {}
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:  # camera is gray: send it as RGB like the others
            image = (skimage.color.gray2rgb(image)).astype(np.uint8)
        photos[name] = image[..., :3]
    for filename in SKLEARN_PHOTOS:
        photos[filename.removesuffix(".jpg")] = sklearn.datasets.load_sample_image(filename)
    return photos


def resize_long_side(image: np.ndarray, long_side: int) -> Image.Image:
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if image_format == "JPEG" else {}
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def make_payloads(
    photos: dict[str, np.ndarray], sizes: tuple[int, ...], noise_sigma: float | None = None
) -> list[Payload]:
    """Every photo at every size, as JPEG and as PNG; with ``noise_sigma``, noisy.

    Noise goes on after resizing, so every size carries the same sigma.
    """
    payloads = []
    for name, photo in photos.items():
        for size in sizes:
            image = resize_long_side(photo, size)
            if noise_sigma is not None:
                noisy = add_noise(np.asarray(image), noise_sigma, NOISE_SEED)
                image = Image.fromarray(noisy)
            for image_format, content_type in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
                payloads.append(
                    Payload(
                        name=f"{name}-{size}.{image_format.lower()}",
                        body=encode(image, image_format),
                        content_type=content_type,
                        width=image.width,
                        height=image.height,
                    )
                )
    return payloads


def add_noise(photo: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """The photo with Gaussian noise of ``sigma`` pixel levels, clipped to uint8."""
    rng = np.random.default_rng(seed)
    noisy = photo.astype(np.float32) + rng.normal(0.0, sigma, photo.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@functools.cache
def photo_payloads() -> tuple[Payload, ...]:
    """Clean photos for classify, segment and caption."""
    return tuple(make_payloads(load_photos(), sizes_from_env("KERVE_LOADTEST_SIZES", SIZES)))


@functools.cache
def small_payloads() -> tuple[Payload, ...]:
    """Small clean photos for upscale."""
    sizes = sizes_from_env("KERVE_LOADTEST_UPSCALE_SIZES", UPSCALE_SIZES)
    return tuple(make_payloads(load_photos(), sizes))


@functools.cache
def noisy_payloads() -> tuple[Payload, ...]:
    """Noisy photos (sigma 25, fixed seed) for denoise, at modest sizes."""
    sizes = sizes_from_env("KERVE_LOADTEST_DENOISE_SIZES", DENOISE_SIZES)
    return tuple(make_payloads(load_photos(), sizes, noise_sigma=NOISE_SIGMA))
