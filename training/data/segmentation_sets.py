"""A user's segmentation data set: images with class-index masks, in one of two layouts.

``images-masks``::

    DIR/labels.txt            one class name per line; line i names class index i
    DIR/images/<stem>.jpg     (or .png, .bmp, .webp, ...)
    DIR/masks/<stem>.png      palette (P) or grey (L) PNG, one class index per pixel
    DIR/splits/{train,val,test}.txt   optional: stems, one per line

``voc`` (PASCAL VOC 2007/2012, as unpacked: DIR may also be VOCdevkit/ or hold VOC2012/)::

    DIR/JPEGImages/<stem>.jpg
    DIR/SegmentationClass/<stem>.png       palette PNGs; 255 marks boundaries (ignored)
    DIR/ImageSets/Segmentation/{train,val,test}.txt   optional
    DIR/labels.txt                         optional: else the 20 VOC classes + background

Masks are the size of their images; a pixel holds a class index below the number of
labels, or the ignore index (255 by default), which training leaves out of the loss
and evaluation leaves out of IoU and accuracy.

Splits: where split lists are given they are used. Without a test list, the given
val list becomes the test split (VOC 2012's test masks are not public, and VOC results
are reported on val) and validation is a seeded 15% of the train list. Without lists,
the images are split 70/15/15 by a seeded shuffle of their sorted stems: the same split
for the same files and seed, whatever order the directory lists them in.

Every problem (a missing pair, a mask of another size than its image, a class index
outside the labels, an unreadable file, a missing or empty labels.txt, a split list
naming a missing file) is collected, and all are raised together as one DataError,
each line naming the file, before anything trains.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from pathlib import Path

import numpy as np

from training.data import splits
from training.data.image_files import (
    DataError,
    Problems,
    list_images,
    open_image,
    read_mask,
    resized,
    resized_mask,
    to_rgb,
    without_image_suffix,
)

LAYOUTS = ("images-masks", "voc")
SPLITS = ("train", "val", "test")
LABELS_FILE = "labels.txt"
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
VOC_FOLDERS = ("JPEGImages", "SegmentationClass")
VOC_LISTS = Path("ImageSets/Segmentation")
MAX_LABELS = 256  # a mask pixel is one byte
VAL_FROM_TRAIN = 0.15  # of the train list, when no test list is given


@dataclasses.dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path


@dataclasses.dataclass(frozen=True)
class SegmentationSet:
    """A checked data set: its labels and its pairs per split (nothing decoded yet)."""

    directory: Path
    layout: str
    labels: list[str]
    splits: dict[str, list[Pair]]
    split_source: str  # how the splits were made, in words
    ignore_index: int


@dataclasses.dataclass(frozen=True)
class SplitArrays:
    images: np.ndarray  # uint8 [n, size, size, 3]
    masks: np.ndarray  # uint8 [n, size, size]: class indices, or the ignore index
    pairs: list[Pair]


def detect_layout(directory: Path) -> str:
    """The layout of ``directory``, from the folders it holds."""
    if voc_root(directory) is not None:
        return "voc"
    if (directory / "images").is_dir() and (directory / "masks").is_dir():
        return "images-masks"
    raise DataError(
        f"{directory}: not a segmentation data set: expected images/ and masks/ (with "
        f"labels.txt), or PASCAL VOC's {' and '.join(VOC_FOLDERS)}/"
    )


def voc_root(directory: Path) -> Path | None:
    """The folder holding JPEGImages/ and SegmentationClass/: DIR, or a VOC20xx inside it
    (or inside DIR/VOCdevkit), as the VOC archives unpack."""
    candidates = [directory, *sorted(directory.glob("VOC20*")),
                  *sorted(directory.glob("VOCdevkit/VOC20*"))]  # fmt: skip
    for candidate in candidates:
        if all((candidate / folder).is_dir() for folder in VOC_FOLDERS):
            return candidate
    return None


def load(
    directory: Path, layout: str | None = None, ignore_index: int = 255, seed: int = 1337
) -> SegmentationSet:
    """Check the layout, labels, pairs and split lists of ``directory``; DataError if any
    is wrong. Images and masks are decoded (and checked) by ``read_arrays``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder")
    layout = layout or detect_layout(directory)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not 0 <= ignore_index <= 255:
        raise ValueError(f"the ignore index must be 0..255 (a mask byte), got {ignore_index}")
    problems = Problems(f"segmentation data set {directory} ({layout})")
    if layout == "voc":
        root = voc_root(directory) or directory
        image_dir, mask_dir = root / "JPEGImages", root / "SegmentationClass"
        list_dir = root / VOC_LISTS
        labels_file = root / LABELS_FILE if (root / LABELS_FILE).exists() else None
        labels = read_labels(labels_file, problems) if labels_file else list(VOC_CLASSES)
        # VOC holds many more images than masks (its detection images): only an image
        # with a mask is a pair, and a mask needs its image.
        images_need_masks = False
    else:
        root = directory
        image_dir, mask_dir, list_dir = root / "images", root / "masks", root / "splits"
        labels = read_labels(root / LABELS_FILE, problems)
        images_need_masks = True
    pairs = find_pairs(image_dir, mask_dir, images_need_masks, problems)
    parts, source = make_splits(pairs, list_dir, seed, problems)
    if not problems and sum(map(len, parts.values())) < len(SPLITS):
        problems.add(directory, f"{len(pairs)} image/mask pair(s): at least 3 are needed, "
                     "one each for training, validation and test")  # fmt: skip
    problems.raise_if_any()
    return SegmentationSet(directory, layout, labels, parts, source, ignore_index)


def read_labels(path: Path, problems: Problems) -> list[str]:
    """Class names, line i naming class index i; trailing blank lines are ignored."""
    if not path.is_file():
        problems.add(path, "missing: write one class name per line (line 1 = class index 0)")
        return []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        problems.add(path, f"cannot be read as UTF-8 text ({error})")
        return []
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if not names:
        problems.add(path, "is empty: write one class name per line (line 1 = class index 0)")
        return []
    for number, name in enumerate(names, start=1):
        if not name:
            problems.add(path, f"line {number} is empty: class index {number - 1} needs a name")
    seen: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if name and name in seen:
            problems.add(path, f"line {number} repeats {name!r} (line {seen[name]})")
        seen.setdefault(name, number)
    if len(names) > MAX_LABELS:
        problems.add(path, f"names {len(names)} classes; a mask byte holds at most {MAX_LABELS}")
    return names


def find_pairs(
    image_dir: Path, mask_dir: Path, images_need_masks: bool, problems: Problems
) -> dict[str, Pair]:
    """{stem: Pair} of the images with a mask of the same stem; missing pairs are problems."""
    missing = [folder for folder in (image_dir, mask_dir) if not folder.is_dir()]
    for folder in missing:
        problems.add(folder, "missing folder")
    if missing:
        return {}
    images = list_images(image_dir, problems)
    masks = list_images(mask_dir, problems)
    for stem, path in masks.items():
        if path.suffix.lower() != ".png":
            problems.add(path, "a mask must be a PNG: lossy formats change class indices")
        elif stem not in images:
            problems.add(path, f"mask without an image: no {stem}.* in {image_dir}")
    if images_need_masks:
        for stem, path in images.items():
            if stem not in masks:
                problems.add(path, f"image without a mask: no {mask_dir / (stem + '.png')}")
    return {
        stem: Pair(stem, images[stem], path)
        for stem, path in masks.items()
        if stem in images and path.suffix.lower() == ".png"
    }


def make_splits(
    pairs: dict[str, Pair], list_dir: Path, seed: int, problems: Problems
) -> tuple[dict[str, list[Pair]], str]:
    """The pairs of each split and how the split was made (see the module docstring)."""
    lists = {name: list_dir / f"{name}.txt" for name in SPLITS}
    lists = {name: path for name, path in lists.items() if path.is_file()}
    if not lists:
        stems = splits.split_names(list(pairs), splits.DEFAULT_FRACTIONS, seed)
        fractions = "/".join(f"{f:.0%}".rstrip("%") for f in splits.DEFAULT_FRACTIONS)
        source = f"seeded {fractions} split of the sorted stems (seed {seed})"
        parts = {name: [pairs[s] for s in part] for name, part in zip(SPLITS, stems, strict=True)}
        return parts, source
    if "train" not in lists or "val" not in lists:
        for path in lists.values():
            problems.add(path, "split lists need at least train.txt and val.txt beside it")
        return {name: [] for name in SPLITS}, ""
    named = {name: read_split_list(path, pairs, problems) for name, path in lists.items()}
    splits.check_disjoint(named, lists, problems)
    stems, how = splits.complete_splits(named, seed, VAL_FROM_TRAIN)
    parts = {name: [pairs[stem] for stem in part] for name, part in stems.items()}
    return parts, f"the split lists in {list_dir}: {how}"


def read_split_list(path: Path, pairs: dict[str, Pair], problems: Problems) -> list[str]:
    """The stems a split list names, one per line (a file name's suffix is allowed)."""
    found, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        stem = without_image_suffix(line.strip())
        if not stem or stem in seen:
            continue
        seen.add(stem)
        if stem in pairs:
            found.append(stem)
        else:
            problems.add(path, f"line {number} names {stem!r}, which has no image/mask pair")
    return found


def read_arrays(dataset: SegmentationSet, image_size: int) -> dict[str, SplitArrays]:
    """Every split's images (bilinear) and masks (nearest neighbour) at image_size.

    Each pair is checked as it is decoded: an unreadable image or mask, a mask of another
    size than its image, class indices outside the labels. All problems raise together.
    """
    problems = Problems(f"segmentation data set {dataset.directory} ({dataset.layout})")
    num_labels = len(dataset.labels)

    def read(pair: Pair):
        try:
            image = to_rgb(open_image(pair.image))
            mask = read_mask(pair.mask)
        except DataError as error:
            return None, None, [str(error)]
        lines = []
        if mask.shape != (image.height, image.width):
            lines.append(
                f"{pair.mask}: is {mask.shape[1]}x{mask.shape[0]} but its image {pair.image.name} "
                f"is {image.width}x{image.height}"
            )
        values = np.unique(mask)
        outside = values[(values >= num_labels) & (values != dataset.ignore_index)]
        if len(outside):
            shown = ", ".join(map(str, outside[:8])) + (" ..." if len(outside) > 8 else "")
            lines.append(
                f"{pair.mask}: class indices {shown} are outside the {num_labels} labels "
                f"(0..{num_labels - 1}; the ignore index is {dataset.ignore_index})"
            )
        if lines:
            return None, None, lines
        return np.asarray(resized(image, image_size)), resized_mask(mask, image_size), []

    arrays = {}
    # Pillow decodes and resizes outside the GIL: threads overlap the files.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for name, pairs in dataset.splits.items():
            images = np.zeros((len(pairs), image_size, image_size, 3), np.uint8)
            masks = np.zeros((len(pairs), image_size, image_size), np.uint8)
            for index, (image, mask, lines) in enumerate(pool.map(read, pairs)):
                problems.extend(lines)
                if not lines:
                    images[index], masks[index] = image, mask
            arrays[name] = SplitArrays(images, masks, pairs)
    problems.raise_if_any()
    return arrays
