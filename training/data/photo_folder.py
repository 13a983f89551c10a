"""A user's folder of clean photos, for the image-to-image tasks (denoising, upscaling).

Two layouts, told apart by the folders DIR holds::

    DIR/**/*.jpg              any depth; .jpeg .png .webp .tif .tiff .bmp .gif too;
                              any size, gray or colour: split by photo, seeded
    DIR/train/**, DIR/test/** the user's own split; DIR/val/** (or validation/) optional:
                              without it, validation is a seeded share of train

Photos are decoded upright (EXIF orientation applied), 16-bit ones scaled to 8 bits
and transparency put on white (training/data/image_files.py, as the service reads an
upload); gray photos stay gray, (h, w), every other one is RGB, (h, w, 3). Photos
longer than ``max_side`` are shrunk (Lanczos) when loaded: a camera's photo holds
sensor noise and JPEG artefacts that shrinking averages away, and a clean target is
what a denoiser or upscaler learns from.

The split is by photo, never by patch: a test photo is never cut into training
patches. It is a seeded shuffle of the sorted relative paths (training/data/splits.py),
so the same files and seed give the same split whatever order the directory lists them.

Every photo is decoded and checked before training; every problem (an unreadable
file, a photo too small for one patch, no photos at all, too few to split) is raised
together as one DataError, each line naming the file.

    folder = photo_folder.load(Path("my-photos"), min_side=64)
    folder.load("train")     # {relative path: uint8 (h, w) or (h, w, 3)}, as photos.load
    folder.names("test")     # relative paths, sorted
    folder.how               # how the split was made, in words
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import splits
from training.data.image_files import IMAGE_SUFFIXES, DataError, Problems, open_image, to_rgb

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
VAL_FOLDERS = ("val", "validation")
# Pillow modes that hold one gray plane (with or without alpha, 1 to 32 bits).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclasses.dataclass(frozen=True)
class PhotoFolder:
    """A checked folder of photos, decoded, split by photo."""

    root: Path
    photos: dict[str, dict[str, np.ndarray]]  # split -> {relative path: uint8 pixels}
    how: str  # how the split was made, in words

    def names(self, split: str) -> list[str]:
        _check_split(split)
        return sorted(self.photos[split])

    def load(self, split: str) -> dict[str, np.ndarray]:
        """The split's photos by relative path (copies: callers may change them)."""
        _check_split(split)
        return {name: self.photos[split][name].copy() for name in self.names(split)}


def load(
    directory: Path,
    min_side: int,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 1337,
    max_side: int | None = None,
) -> PhotoFolder:
    """Find, decode, check and split the photos under ``directory``.

    ``min_side``: the smallest side a photo may have once loaded (a training patch);
    ``max_side``: longer photos are shrunk to this long side (None: kept as they are).
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    problems = Problems(f"photo folder {root}")
    named, how = _split_paths(root, fractions, seed, problems)
    problems.raise_if_any()
    photos: dict[str, dict[str, np.ndarray]] = {split: {} for split in SPLITS}
    for split, paths in named.items():
        for path in paths:
            try:
                pixels = read_photo(path, max_side)
            except DataError as error:
                problems.extend(str(error).splitlines())
                continue
            height, width = pixels.shape[:2]
            if min(height, width) < min_side:
                shrunk = " once shrunk to max_side" if max(height, width) == max_side else ""
                problems.add(
                    path, f"{width}x{height}{shrunk}: too small for one {min_side}x{min_side} patch"
                )
                continue
            photos[split][path.relative_to(root).as_posix()] = pixels
    problems.raise_if_any()
    return PhotoFolder(root, photos, how)


def find_photos(directory: Path) -> list[Path]:
    """The image files under ``directory``, at any depth, sorted; hidden ones skipped."""
    return sorted(
        path
        for path in Path(directory).rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    )


def read_photo(path: Path, max_side: int | None = None) -> np.ndarray:
    """uint8 (h, w) for a gray photo, (h, w, 3) for any other; DataError if unreadable."""
    image = open_image(Path(path))
    gray = image.mode in GRAY_MODES or (image.mode == "P" and _gray_palette(image))
    image = to_rgb(image)
    if gray:
        image = image.convert("L")  # exact: the three channels are equal
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(image, np.uint8)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """ "0.8,0.1,0.1" (train, validation, test) as fractions that sum to 1."""
    try:
        parts = tuple(float(part) for part in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or not np.isclose(sum(parts), 1.0) or parts[2] == 0:
        raise ValueError(
            f"--split is TRAIN,VAL,TEST fractions that sum to 1 (test above 0), got {text!r}"
        )
    return parts  # type: ignore[return-value]


def _split_paths(
    root: Path, fractions: tuple[float, ...], seed: int, problems: Problems
) -> tuple[dict[str, list[Path]], str]:
    """The photos of each split: the user's train/val/test folders, else a seeded split."""
    folders = {split: root / split for split in ("train", "test")}
    if all(folder.is_dir() for folder in folders.values()):
        return _given_split(root, fractions, seed, problems)
    paths = find_photos(root)
    if not paths:
        problems.add(root, f"no photos found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return {}, ""
    if len(paths) < len(SPLITS):
        problems.add(root, f"{len(paths)} photo(s): a split needs at least 3 (train, val, test)")
        return {}, ""
    by_name = {path.relative_to(root).as_posix(): path for path in paths}
    parts = splits.split_names(list(by_name), tuple(fractions), seed)
    how = f"a seeded split of {len(paths)} photos, {_percent(fractions)} (seed {seed})"
    return {s: [by_name[n] for n in part] for s, part in zip(SPLITS, parts, strict=True)}, how


def _given_split(root: Path, fractions, seed: int, problems: Problems):
    val_folder = next((root / n for n in VAL_FOLDERS if (root / n).is_dir()), None)
    used = {root / "train", root / "test", *([val_folder] if val_folder else [])}
    named = {split: find_photos(root / split) for split in ("train", "test")}
    for path in find_photos(root):
        if not any(folder in path.parents for folder in used):
            problems.add(path, "outside the train/, val/ and test/ folders: move it into one")
    if val_folder is not None:
        named["val"] = find_photos(val_folder)
        how = f"the folders train/, {val_folder.name}/ and test/"
    else:
        share = fractions[1] / (fractions[0] + fractions[1]) if fractions[1] else 0.1
        by_name = {p.relative_to(root).as_posix(): p for p in named["train"]}
        train, val = splits.split_names(list(by_name), (1 - share, share), seed)
        named["train"], named["val"] = [by_name[n] for n in train], [by_name[n] for n in val]
        how = f"the folders train/ and test/; val: a seeded {share:.0%} of train (seed {seed})"
    for split in SPLITS:
        if not named[split]:
            where = root / ("train" if split == "val" and val_folder is None else split)
            problems.add(where, f"no photos for the {split} split")
    return {split: named[split] for split in SPLITS}, how


def _gray_palette(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(len(rgb)) and bool(np.all(rgb == rgb[:, :1]))


def _percent(fractions) -> str:
    return "/".join(f"{fraction:.0%}" for fraction in fractions)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
