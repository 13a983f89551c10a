"""Real photos for the denoiser and the upscaler, split by photo: no test photo is ever
cut into training patches.

The build machines have no internet, so the photos are the ones that ship inside
packages: scikit-image's ``skimage.data`` and scikit-learn's two samples (PyPI), and
the real photos among the desktop wallpapers of three Debian packages. A wallpaper is
shrunk to 512 pixels on its long side (Lanczos, after JPEG's own DCT scaling): that
averages away the JPEG artefacts and sensor noise of the 1-14 megapixel originals,
so they are clean targets. The drawings and abstract art in those packages are left
out. Without the packages, the scikit-image and scikit-learn photos are used alone,
and the first use says so in one line.

    photos.load("test")             # {name: uint8 array, (h, w, 3) or (h, w)}
    photos.patch_pool("train", 64)  # uint8 patches at several scales, for tf.data

The wallpapers (``apt-get install mate-backgrounds lomiri-wallpapers-16.04
plasma-workspace-wallpapers``): name, split, author and licence, as the package's
/usr/share/doc/<package>/copyright (for Plasma, the wallpaper's metadata.json) says.

mate-backgrounds 1.26, every photo GPL-2+:
    train  mate/Aqua, mate/Garden, mate/YellowFlower (Charles Barbin), mate/Blinds
           (Lennart Poettering, Andrea Cimitan), mate/Dune (Marco Cogoni, Hylke Bons),
           mate/FreshFlower (Jens Ansorg), mate/GreenMeadow (Timothy Schellhase, Lapo
           Calamandrei), mate/Storm (Sergey Nazarov), mate/TwoWings (Charles Barbin,
           Hylke Bons), mate/Wood (Jean-François Fortin Tam)
    test   mate/LadyBird (Charles Barbin), mate/RainDrops ("blackcombwhistler07")
lomiri-wallpapers-16.04, licence per photo:
    train  lomiri/aitzgorri, lomiri/friends, lomiri/picosdeeuropa, lomiri/sunset (Aitzol
           Berasategi, CC-BY-4.0), lomiri/Picture_0B (Trevor "Freespace", CC-BY-4.0),
           lomiri/Bridge (Sander Klootwijk, CC-BY-SA-4.0), lomiri/Dragonfly ("Bolly",
           CC-BY-SA-4.0), lomiri/analogpattern, lomiri/free, lomiri/greentock (Peter
           Nerlich, CC-BY-SA-4.0), lomiri/seeding (Clemens Engelhardt, CC0-1.0)
    val    lomiri/Picture_1A (Trevor "Freespace", CC-BY-4.0)
    test   lomiri/life (Aitzol Berasategi, CC-BY-4.0), lomiri/Wine (Jakub Mede, CC-BY-4.0)
plasma-workspace-wallpapers 5.27, every photo LGPL-3 (metadata.json; Debian's copyright
file gives GPL-2+ for the whole package):
    train  plasma/BytheWater (Maciej Wiklo), plasma/ColdRipple, plasma/DarkestHour,
           plasma/Kite, plasma/OneStandsOut, plasma/summer_1am (Risto Saukonpää),
           plasma/ColorfulCups (Dmitri Popov), plasma/FallenLeaf (Martin Klapetek)
    val    plasma/Path (Risto Saukonpää)
    test   plasma/EveningGlow (Ian Hex), plasma/Grey (Sigi Sagi; a gray photo)

Left out as drawings or abstract art: MATE's abstract/ and desktop/ folders, Lomiri's
umang, Plasma's Autumn, SafeLanding and its rendered wallpapers (the PNGs, Flow,
Honeywave, Shell, Volna).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SPLITS = ("train", "val", "test")
# Patches are also cut from each photo shrunk by these factors (as DnCNN does):
# more patches, and textures at more than one scale.
PATCH_SCALES = (1.0, 0.8, 0.6)
WALLPAPER_SIDE = 512  # a wallpaper's long side once shrunk


@dataclasses.dataclass(frozen=True)
class Photo:
    name: str
    split: str
    gray: bool
    path: str | None = None  # a wallpaper's file; None for the PyPI packages' photos
    package: str | None = None  # the Debian package a wallpaper comes with


MATE = "/usr/share/backgrounds/mate/nature/{}.jpg"
LOMIRI = "/usr/share/backgrounds/{}.jpg"
PLASMA = "/usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
PACKAGE_OF = {MATE: "mate-backgrounds", LOMIRI: "lomiri-wallpapers-16.04",
              PLASMA: "plasma-workspace-wallpapers"}  # fmt: skip


def _wallpaper(folder: str, file: str, split: str, gray: bool = False) -> Photo:
    package = PACKAGE_OF[folder]
    name = f"{package.split('-')[0]}/{file.split('_by_')[0]}"
    return Photo(name, split, gray, folder.format(file), package)


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
        Photo("chelsea", "val", gray=False),  # the first val photo: classical methods tune on it
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
        # Debian's wallpapers (the module docstring lists authors and licences)
        *(_wallpaper(MATE, file, "train") for file in (
            "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "Storm",
            "TwoWings", "Wood", "YellowFlower")),
        *(_wallpaper(MATE, file, "test") for file in ("LadyBird", "RainDrops")),
        *(_wallpaper(LOMIRI, file, "train") for file in (
            "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
            "aitzgorri_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich",
            "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
            "greentock_by_Peter_Nerlich", "picosdeeuropa_by_Aitzol_Berasategi",
            "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi")),
        _wallpaper(LOMIRI, "Picture_1A_by_freespace", "val"),
        _wallpaper(LOMIRI, "life_by_Aitzol_Berasategi", "test"),
        _wallpaper(LOMIRI, "Wine_by_Jakkub_Mede", "test"),
        *(_wallpaper(PLASMA, file, "train") for file in (
            "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "FallenLeaf", "Kite",
            "OneStandsOut", "summer_1am")),
        _wallpaper(PLASMA, "Path", "val"),
        _wallpaper(PLASMA, "EveningGlow", "test"),
        _wallpaper(PLASMA, "Grey", "test", gray=True),
    )
}  # fmt: skip


def available(photo: Photo) -> bool:
    """A wallpaper is there only where its Debian package is installed."""
    return photo.path is None or Path(photo.path).is_file()


def names(split: str) -> list[str]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    _say_what_is_missing()
    return [p.name for p in PHOTOS.values() if p.split == split and available(p)]


def load(split: str) -> dict[str, np.ndarray]:
    """The split's photos by name, uint8, colour (h, w, 3) or gray (h, w)."""
    return {name: read_photo(name) for name in names(split)}


def read_photo(name: str) -> np.ndarray:
    """One photo by name (a copy: callers may change it)."""
    return _decoded(name).copy()


@functools.cache
def _decoded(name: str) -> np.ndarray:
    path = PHOTOS[name].path if name in PHOTOS else None
    if path is not None:
        return read_wallpaper(Path(path))
    if name in ("china", "flower"):
        import sklearn.datasets

        return np.asarray(sklearn.datasets.load_sample_image(f"{name}.jpg"), np.uint8)
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return np.asarray(left if name.endswith("left") else right, np.uint8)
    return np.asarray(getattr(skimage.data, name)(), np.uint8)


def read_wallpaper(path: Path, side: int = WALLPAPER_SIDE) -> np.ndarray:
    """A wallpaper shrunk to ``side`` on its long side: JPEG's DCT scaling down to no less
    than 3x the size (Pillow's draft), then Lanczos; upright; gray stays gray."""
    with Image.open(path) as image:
        image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
        image = ImageOps.exif_transpose(image)
        return np.asarray(image.convert("L" if image.mode == "L" else "RGB"), np.uint8)


@functools.cache
def _say_what_is_missing() -> None:
    """One line, once, when some wallpapers are left out for want of their package."""
    missing = [p for p in PHOTOS.values() if not available(p)]
    if not missing:
        return
    packages = sorted({str(photo.package) for photo in missing})
    print(
        f"photos: {len(missing)} Debian wallpaper photos left out, packages not installed "
        f"({', '.join(packages)}): apt-get install {' '.join(packages)} adds them",
        flush=True,
    )


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
