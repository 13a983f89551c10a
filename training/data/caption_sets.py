"""A user's captioning data set: images, each with one or more captions, in one of
three formats.

``csv``::

    DIR/images/<name>.jpg
    DIR/captions.csv          header "image,caption"; a row per caption, several per image

``flickr8k`` (the Flickr8k archives, unpacked into DIR)::

    DIR/images/ (or Flicker8k_Dataset/, as the archive names it)
    DIR/Flickr8k.token.txt    "<image>#<n><TAB><caption>" per line
    DIR/Flickr_8k.{train,dev,test}Images.txt   optional split lists, one image per line

``coco`` (COCO captions, 2014 or 2017)::

    DIR/images/<file_name>
    DIR/captions_train2017.json (or DIR/annotations/captions_*.json, or --captions FILE):
        {"images": [{"id", "file_name"}, ...], "annotations": [{"image_id", "caption"}, ...]}

Captions are normalised: Unicode NFKC, lower case, and punctuation removed (not split
off into tokens): commas, full stops, quotes and brackets vanish, while a hyphen or an
apostrophe inside a word stays ("a dog's t-shirt."  ->  "a dog's t-shirt"). A caption's
tokens are then ``caption.split()``.

Splits: the Flickr8k lists where present (an image in no list is left out: the token
file names one image, 2258277193_586949ec62.jpg.1, that the archive lacks); otherwise
70/15/15 by a seeded shuffle of the sorted image names, so an image's captions stay
together and the split depends only on the files and the seed.

Every problem (a caption naming a missing image, an image with no caption, an empty
caption, an unreadable image, a malformed CSV row, JSON document or token line, with
its line number) is collected and raised together, each line naming the file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import json
import os
import re
import unicodedata
from pathlib import Path

import numpy as np

from training.data import splits
from training.data.captions import SPECIAL_TOKENS
from training.data.image_files import (
    DataError,
    Problems,
    list_images,
    read_rgb,
)

FORMATS = ("csv", "flickr8k", "coco")
SPLITS = ("train", "val", "test")
CSV_FILE = "captions.csv"
FLICKR_TOKENS = "Flickr8k.token.txt"
FLICKR_LISTS = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
IMAGE_FOLDERS = ("images", "Flicker8k_Dataset", "Flickr8k_Dataset")
# A word: letters or digits, with inner hyphens or apostrophes ("t-shirt", "dog's").
WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


@dataclasses.dataclass(frozen=True)
class CaptionSet:
    """A checked data set: which images each split holds and every image's captions."""

    directory: Path
    format: str
    captions_file: Path
    image_dir: Path
    splits: dict[str, list[str]]  # image names (paths relative to image_dir), sorted
    captions: dict[str, list[str]]  # image name -> its normalised captions, file order
    split_source: str  # how the splits were made, in words

    def references(self, split: str) -> list[list[str]]:
        return [self.captions[name] for name in self.splits[split]]


def normalise(caption: str) -> str:
    """Lower case words, punctuation removed (see the module docstring)."""
    text = unicodedata.normalize("NFKC", caption).lower().replace("\u2019", "'")
    return " ".join(WORD.findall(text))


def build_vocabulary(
    captions: list[str], max_words: int | None = None, min_count: int = 1
) -> list[str]:
    """The special tokens, then the words of ``captions`` seen at least ``min_count``
    times, the ``max_words`` most frequent of them (ties by spelling), sorted. With the
    defaults this is every word, as training/data/captions.py's ``vocabulary`` builds it."""
    counts = collections.Counter(word for caption in captions for word in caption.split())
    kept = [word for word, count in counts.items() if count >= min_count]
    if max_words is not None and len(kept) > max_words:
        kept = sorted(kept, key=lambda word: (-counts[word], word))[:max_words]
    return [*SPECIAL_TOKENS, *sorted(kept)]


# -- finding the files ---------------------------------------------------------------------
def detect(directory: Path, captions_file: Path | None = None) -> tuple[str, Path]:
    """(format, captions file) of ``directory``; ``captions_file`` chooses among several."""
    if captions_file is not None:
        path = captions_file if captions_file.is_absolute() else directory / captions_file
        if not path.is_file():
            raise DataError(f"{path}: no such captions file")
        return format_of(path), path
    candidates = [directory / CSV_FILE, directory / FLICKR_TOKENS,
                  directory / "Flickr8k_text" / FLICKR_TOKENS,
                  *sorted(directory.glob("*.json")),
                  *sorted(directory.glob("annotations/captions_*.json"))]  # fmt: skip
    found = [path for path in candidates if path.is_file()]
    if not found:
        raise DataError(
            f"{directory}: no captions found: expected {CSV_FILE}, {FLICKR_TOKENS} or a COCO "
            "captions JSON (captions_*.json) beside images/"
        )
    if len(found) > 1:
        names = ", ".join(str(path.relative_to(directory)) for path in found)
        raise DataError(f"{directory}: several captions files ({names}); choose with --captions")
    return format_of(found[0]), found[0]


def format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        return "coco"
    if suffix == ".txt":
        return "flickr8k"
    raise DataError(f"{path}: a captions file is .csv, .json (COCO) or .txt (Flickr8k tokens)")


def find_image_dir(directory: Path, captions_file: Path) -> Path | None:
    for base in dict.fromkeys((directory, captions_file.parent)):
        for name in IMAGE_FOLDERS:
            if (base / name).is_dir():
                return base / name
    return None


# -- reading the captions ------------------------------------------------------------------
def read_csv(path: Path, problems: Problems) -> dict[str, list[tuple[int, str]]]:
    """image -> [(line number, caption)] of a captions.csv."""
    found: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            columns = [name.strip().lower() for name in header or []]
            if "image" not in columns or "caption" not in columns:
                problems.add(path, f"line 1: the header must be 'image,caption', not {header}")
                return {}
            image_at, caption_at = columns.index("image"), columns.index("caption")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                line = reader.line_num
                if len(row) != len(columns):
                    problems.add(path, f"line {line}: {len(row)} fields, expected "
                                 f"{len(columns)} (quote a caption with a comma)")  # fmt: skip
                    continue
                image, caption = row[image_at].strip(), row[caption_at]
                if not image:
                    problems.add(path, f"line {line}: no image named")
                    continue
                found[image].append((line, caption))
    except csv.Error as error:
        problems.add(path, f"line {reader.line_num}: malformed CSV ({error})")
    except (OSError, UnicodeDecodeError) as error:
        problems.add(path, f"cannot be read as UTF-8 text ({error})")
    return found


def read_flickr_tokens(path: Path, problems: Problems) -> dict[str, list[tuple[int, str]]]:
    """image -> [(line number, caption)] of a Flickr8k token file."""
    found: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        problems.add(path, f"cannot be read as UTF-8 text ({error})")
        return found
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        image, hash_sign, index = key.strip().rpartition("#")
        if not tab or not hash_sign or not image or not index.isdigit():
            problems.add(path, f"line {number}: expected '<image>#<n><TAB><caption>', got "
                         f"{line[:60]!r}")  # fmt: skip
            continue
        found[image].append((number, caption))
    return found


def read_coco(path: Path, problems: Problems) -> dict[str, list[tuple[int, str]]]:
    """image file name -> [(annotation index, caption)] of a COCO captions JSON."""
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        problems.add(
            path, f"line {error.lineno} column {error.colno}: malformed JSON ({error.msg})"
        )
        return {}
    except (OSError, UnicodeDecodeError) as error:
        problems.add(path, f"cannot be read as UTF-8 text ({error})")
        return {}
    if not isinstance(document, dict) or not all(
        isinstance(document.get(key), list) for key in ("images", "annotations")
    ):
        problems.add(path, "not COCO captions: needs the lists 'images' and 'annotations'")
        return {}
    names: dict[object, str] = {}
    for index, image in enumerate(document["images"]):
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            problems.add(path, f"images[{index}]: needs an 'id' and a 'file_name'")
        elif image["id"] in names:
            problems.add(path, f"images[{index}]: id {image['id']} is used twice")
        else:
            names[image["id"]] = str(image["file_name"])
    found: dict[str, list[tuple[int, str]]] = {name: [] for name in names.values()}
    for index, note in enumerate(document["annotations"]):
        if not isinstance(note, dict) or "image_id" not in note or "caption" not in note:
            problems.add(path, f"annotations[{index}]: needs an 'image_id' and a 'caption'")
        elif note["image_id"] not in names:
            problems.add(path, f"annotations[{index}]: image_id {note['image_id']} is not "
                         "among the 'images'")  # fmt: skip
        elif not isinstance(note["caption"], str):
            problems.add(path, f"annotations[{index}]: the caption is not a string")
        else:
            found[names[note["image_id"]]].append((index, note["caption"]))
    return found


READERS = {"csv": read_csv, "flickr8k": read_flickr_tokens, "coco": read_coco}


def where(fmt: str, position: int) -> str:
    """How a problem points at a caption: a line number, or the COCO annotation index."""
    return f"annotations[{position}]" if fmt == "coco" else f"line {position}"


# -- the data set --------------------------------------------------------------------------
def load(directory: Path, captions_file: Path | None = None, seed: int = 1337) -> CaptionSet:
    """Read and check ``directory``'s captions, images and splits; DataError if any is
    wrong. The images are decoded (and checked) by ``read_images``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder")
    fmt, path = detect(directory, captions_file)
    problems = Problems(f"captioning data set {directory} ({fmt}, {path.name})")
    image_dir = find_image_dir(directory, path)
    if image_dir is None:
        raise DataError(f"{directory / 'images'}: missing folder (the images the captions name)")
    raw = READERS[fmt](path, problems)
    named = read_flickr_lists(path.parent, problems) if fmt == "flickr8k" else {}
    listed = {name for names in named.values() for name in names}
    left_out = sorted(name for name in raw if listed and name not in listed)

    captions: dict[str, list[str]] = {}
    for image, rows in raw.items():
        if image in left_out:
            continue
        if not rows:  # a COCO image without annotations
            problems.add(path, f"{image}: an image with no caption")
            continue
        if not (image_dir / image).is_file():
            problems.add(path, f"{where(fmt, rows[0][0])}: names {image}, which is not in "
                         f"{image_dir}")  # fmt: skip
        captions[image] = [normalise(caption) for _, caption in rows]
        for (position, _), text in zip(rows, captions[image], strict=True):
            if not text:
                problems.add(path, f"{where(fmt, position)}: empty caption for {image}")
    for file in list_images(image_dir, problems).values():
        if file.name not in raw:
            problems.add(file, f"an image with no caption in {path.name}")
    for part, names in named.items():
        for name in names:
            if name not in captions:
                problems.add(
                    path.parent / FLICKR_LISTS[part], f"names {name}, which has no caption"
                )
    problems.raise_if_any()

    if named:
        listed_splits, how = splits.complete_splits(named, seed)
        source = f"the Flickr8k split lists: {how}"
        if left_out:
            source += f"; {len(left_out)} captioned image(s) in no list left out ({left_out[0]})"
    else:
        parts = splits.split_names(list(captions), splits.DEFAULT_FRACTIONS, seed)
        listed_splits = dict(zip(SPLITS, parts, strict=True))
        source = f"seeded 70/15/15 split by image (seed {seed})"
    if min(len(names) for names in listed_splits.values()) == 0:
        raise DataError(
            f"{directory}: {len(captions)} captioned image(s): at least 3 are needed, one each "
            "for training, validation and test"
        )
    return CaptionSet(directory, fmt, path, image_dir, listed_splits, captions, source)


def read_flickr_lists(folder: Path, problems: Problems) -> dict[str, list[str]]:
    """{"train", "val"[, "test"]: image names} from the Flickr8k lists in ``folder``."""
    files = {part: folder / name for part, name in FLICKR_LISTS.items()}
    files = {part: path for part, path in files.items() if path.is_file()}
    if not files:
        return {}
    if "train" not in files or "val" not in files:
        for path in files.values():
            problems.add(path, f"needs {FLICKR_LISTS['train']} and {FLICKR_LISTS['val']} beside it")
        return {}
    named = {
        part: list(dict.fromkeys(line.strip() for line in path.read_text().splitlines()
                                 if line.strip()))
        for part, path in files.items()
    }  # fmt: skip
    splits.check_disjoint(named, files, problems)
    return named


def read_images(dataset: CaptionSet, names: list[str], image_size: int) -> np.ndarray:
    """uint8 [n, size, size, 3] of the named images; unreadable ones raise together."""
    problems = Problems(f"captioning data set {dataset.directory}")
    images = np.zeros((len(names), image_size, image_size, 3), np.uint8)

    def read(index: int) -> str | None:
        try:
            images[index] = read_rgb(dataset.image_dir / names[index], image_size)
        except DataError as error:
            return str(error)
        return None

    # Pillow decodes and resizes outside the GIL: threads overlap the files.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        problems.extend([line for line in pool.map(read, range(len(names))) if line])
    problems.raise_if_any()
    return images
