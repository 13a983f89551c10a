"""Reading a user's image files for training, the way the service reads uploads.

Shared by the data-set loaders (segmentation_sets.py, caption_sets.py): listing a
folder's images by stem, decoding one upright RGB image (EXIF orientation applied,
transparency on white, 16-bit scaled, resized bilinearly as service/imaging.py does, so
a model trains on what it will be served), reading a class-index mask, and
``DataError``, whose message names the file and the problem. Loaders collect every
problem of a data set with ``Problems`` and raise them together, before any training.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MASK_MODES = frozenset({"P", "L"})  # one class index per pixel
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
BACKGROUND = (255, 255, 255)  # what transparent pixels become, as in the service
SHOWN_PROBLEMS = 20  # a broken data set lists this many problems, then a count

# A large photo is the user's own; Pillow's bomb warning is noise here.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class DataError(ValueError):
    """A data set that cannot be trained on; each line names a file and its problem."""


class Problems:
    """Problems found while checking a data set, raised together by ``raise_if_any``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.lines: list[str] = []

    def add(self, path: Path | str, problem: str) -> None:
        self.lines.append(f"{path}: {problem}")

    def extend(self, lines: list[str]) -> None:
        """Lines already in the form "file: problem" (a DataError's message)."""
        self.lines.extend(lines)

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_if_any(self) -> None:
        if not self.lines:
            return
        shown = self.lines[:SHOWN_PROBLEMS]
        more = len(self.lines) - len(shown)
        tail = [f"... and {more} more"] if more else []
        count = f"{len(self.lines)} problem{'s' if len(self.lines) > 1 else ''}"
        raise DataError("\n  ".join([f"{self.what}: {count}", *shown, *tail]))


def list_images(folder: Path, problems: Problems, suffixes=IMAGE_SUFFIXES) -> dict[str, Path]:
    """{stem: path} of the image files in ``folder`` (hidden files and other suffixes are
    skipped), in sorted order; two files with one stem are a problem."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            problems.add(path, f"has the same name as {found[path.stem].name}; rename one")
            continue
        found[path.stem] = path
    return found


def without_image_suffix(name: str) -> str:
    """A split list's entry as a stem: "2007_000032" and "2007_000032.jpg" alike."""
    return name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_SUFFIXES else name


def open_image(path: Path) -> Image.Image:
    """The decoded image, upright as a viewer shows it; DataError when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            if _exif_orientation(image) not in (None, 1):
                return ImageOps.exif_transpose(image)  # a new image: outlives the file
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise DataError(f"{path}: cannot read the image ({_reason(error)})") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: 16-bit scaled (not clipped), transparency on white."""
    if image.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def resized(image: Image.Image, size: int) -> Image.Image:
    """Bilinear to size x size, as the service resizes an upload."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)


def read_rgb(path: Path, size: int | None = None) -> np.ndarray:
    """uint8 [h, w, 3] of an image file, resized to size x size when given."""
    image = to_rgb(open_image(path))
    return np.asarray(resized(image, size) if size else image)


def read_mask(path: Path) -> np.ndarray:
    """uint8 [h, w] class indices of a palette ("P") or grey ("L") PNG.

    A palette PNG's pixel values are its palette indices (PASCAL VOC's masks); any other
    mode (RGB colours, 16-bit) is refused: its values are not class indices.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.format != "PNG":
                raise DataError(f"{path}: a mask must be a PNG (lossless), not {image.format}")
            if image.mode not in MASK_MODES:
                raise DataError(
                    f"{path}: a mask must be a palette (P) or grey (L) PNG of class indices, "
                    f"not mode {image.mode}"
                )
            return np.array(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path}: cannot read the mask ({_reason(error)})") from error


def resized_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest neighbour to size x size: every pixel keeps a class index (or the ignore one)."""
    return scale_mask(mask, size, size)


def scale_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [height, width] of a class mask, by nearest neighbour (as the service scales
    a predicted mask back to the image's size)."""
    if mask.shape == (height, width):
        return mask
    image = Image.fromarray(np.asarray(mask, np.uint8))
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST))


def _exif_orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - malformed EXIF must not refuse a readable image
        return None


def _reason(error: Exception) -> str:
    text = str(error).strip()
    if isinstance(error, UnidentifiedImageError):
        return "not an image file Pillow can decode"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
