"""Real photos for the denoiser, split by photo: no test photo is ever cut into training patches.

The build machines have no internet, so the photos are the ones that ship inside
PyPI packages: scikit-image's ``skimage.data`` and scikit-learn's two samples.

    photos.load("test")             # {name: uint8 array, (h, w, 3) or (h, w)}
    photos.patch_pool("train", 64)  # uint8 patches at several scales, for tf.data
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
# Patches are also cut from each photo shrunk by these factors (as DnCNN does):
# more patches, and textures at more than one scale.
PATCH_SCALES = (1.0, 0.8, 0.6)


@dataclasses.dataclass(frozen=True)
class Photo:
    name: str
    split: str
    gray: bool


PHOTOS = {
    photo.name: photo
    for photo in (
        # colour
        Photo("china", "train", gray=False),
        Photo("rocket", "train", gray=False),
        Photo("hubble_deep_field", "train", gray=False),
        Photo("immunohistochemistry", "train", gray=False),
        Photo("retina", "train", gray=False),
        Photo("motorcycle_left", "train", gray=False),
        Photo("motorcycle_right", "train", gray=False),
        Photo("chelsea", "val", gray=False),
        Photo("astronaut", "test", gray=False),
        Photo("coffee", "test", gray=False),
        Photo("flower", "test", gray=False),
        # grayscale
        Photo("moon", "train", gray=True),
        Photo("coins", "train", gray=True),
        Photo("clock", "train", gray=True),
        Photo("page", "train", gray=True),
        Photo("text", "train", gray=True),
        Photo("brick", "train", gray=True),
        Photo("grass", "train", gray=True),
        Photo("gravel", "train", gray=True),
        Photo("cell", "train", gray=True),
        Photo("camera", "test", gray=True),
    )
}


def names(split: str) -> list[str]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    return [photo.name for photo in PHOTOS.values() if photo.split == split]


def load(split: str) -> dict[str, np.ndarray]:
    """The split's photos by name, uint8, colour (h, w, 3) or gray (h, w)."""
    return {name: read_photo(name) for name in names(split)}


def read_photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        import sklearn.datasets

        return np.asarray(sklearn.datasets.load_sample_image(f"{name}.jpg"), np.uint8)
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return np.asarray(left if name.endswith("left") else right, np.uint8)
    return np.asarray(getattr(skimage.data, name)(), np.uint8)


def as_rgb(photo: np.ndarray) -> np.ndarray:
    return np.repeat(photo[..., np.newaxis], 3, axis=2) if photo.ndim == 2 else photo


def as_gray(photo: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as Pillow's "L" conversion (what the service gets for a gray upload)."""
    if photo.ndim == 2:
        return photo
    return np.asarray(Image.fromarray(photo).convert("L"))


def patch_pool(
    photos: dict[str, np.ndarray], patch_size: int, stride: int, channels: int = 3
) -> np.ndarray:
    """Every ``patch_size`` square at ``stride`` of every photo at every PATCH_SCALES,
    as uint8 (n, patch_size, patch_size, channels); gray photos replicated to RGB."""
    patches = []
    for photo in photos.values():
        photo = as_gray(photo) if channels == 1 else as_rgb(photo)
        for scale in PATCH_SCALES:
            image = Image.fromarray(photo)
            if scale != 1.0:
                size = (round(image.width * scale), round(image.height * scale))
                image = image.resize(size, Image.Resampling.BICUBIC)
            patches.append(_grid_patches(np.asarray(image), patch_size, stride))
    pool = np.concatenate(patches)
    return pool[..., np.newaxis] if pool.ndim == 3 else pool


def _grid_patches(image: np.ndarray, patch_size: int, stride: int) -> np.ndarray:
    height, width = image.shape[:2]
    if height < patch_size or width < patch_size:
        return np.empty((0, patch_size, patch_size, *image.shape[2:]), np.uint8)
    return np.stack(
        [
            image[y : y + patch_size, x : x + patch_size]
            for y in range(0, height - patch_size + 1, stride)
            for x in range(0, width - patch_size + 1, stride)
        ]
    )
