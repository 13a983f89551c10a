"""A user's folder of photos: found at any depth in any format, checked, split by photo."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import photo_folder
from training.data.image_files import DataError


def photo(seed: int, size=(48, 40), gray: bool = False) -> Image.Image:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    image = Image.fromarray(pixels)
    return image.convert("L") if gray else image


def make_folder(root: Path, count: int = 10, order=None) -> Path:
    """``count`` photos in nested folders, in five formats, written in ``order``."""
    formats = [("a/{}.jpg", "JPEG"), ("a/b/{}.png", "PNG"), ("{}.webp", "WEBP"),
               ("c/{}.tif", "TIFF"), ("c/d/e/{}.bmp", "BMP")]  # fmt: skip
    for index in order or range(count):
        pattern, image_format = formats[index % len(formats)]
        path = root / pattern.format(f"photo{index}")
        path.parent.mkdir(parents=True, exist_ok=True)
        photo(index, gray=index % 3 == 0).save(path, image_format)
    return root


def test_photos_are_found_at_any_depth_in_every_format(tmp_path):
    root = make_folder(tmp_path / "photos")
    (root / "notes.txt").write_text("not a photo")
    (root / ".hidden").mkdir()
    photo(99).save(root / ".hidden" / "skip.png")
    found = photo_folder.find_photos(root)
    assert len(found) == 10 and {p.suffix for p in found} == {".jpg", ".png", ".webp", ".tif",
                                                                ".bmp"}  # fmt: skip
    folder = photo_folder.load(root, min_side=32)
    everything = {n: a for s in photo_folder.SPLITS for n, a in folder.load(s).items()}
    assert sorted(everything) == sorted(p.relative_to(root).as_posix() for p in found)
    assert everything["a/b/photo1.png"].shape == (40, 48, 3)
    assert everything["c/d/e/photo9.bmp"].shape == (40, 48)  # gray stays gray
    lossless = np.asarray(Image.open(root / "a/b/photo1.png"))
    np.testing.assert_array_equal(everything["a/b/photo1.png"], lossless)


def test_exif_orientation_16_bit_and_shrinking(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: a viewer turns it 90 degrees clockwise
    photo(1, size=(60, 40)).save(root / "turned.jpg", exif=exif)
    levels = (np.arange(50 * 40, dtype=np.uint16).reshape(40, 50) * 30).astype(np.uint16)
    Image.fromarray(levels).save(root / "deep.png")  # 16-bit gray
    photo(2, size=(400, 100)).save(root / "wide.png")
    assert photo_folder.read_photo(root / "turned.jpg").shape == (60, 40, 3)
    deep = photo_folder.read_photo(root / "deep.png")
    assert deep.shape == (40, 50) and deep.max() == round(levels.max() / 257)  # scaled
    assert photo_folder.read_photo(root / "wide.png", max_side=200).shape == (50, 200, 3)


def test_the_split_is_seeded_by_photo_and_stable_under_file_order(tmp_path):
    first = photo_folder.load(make_folder(tmp_path / "one"), min_side=32, seed=5)
    reordered = make_folder(tmp_path / "two", order=list(reversed(range(10))))
    again = photo_folder.load(reordered, min_side=32, seed=5)
    names = {split: first.names(split) for split in photo_folder.SPLITS}
    assert names == {split: again.names(split) for split in photo_folder.SPLITS}
    assert [len(names[s]) for s in photo_folder.SPLITS] == [8, 1, 1]
    assert "seeded split of 10 photos, 80%/10%/10% (seed 5)" in first.how
    other = photo_folder.load(tmp_path / "one", min_side=32, seed=6)
    assert {s: other.names(s) for s in photo_folder.SPLITS} != names
    halves = photo_folder.load(tmp_path / "one", min_side=32, fractions=(0.5, 0.2, 0.3))
    assert [len(halves.names(s)) for s in photo_folder.SPLITS] == [5, 2, 3]


def test_train_val_test_folders_are_the_users_split(tmp_path):
    root = tmp_path / "photos"
    for split, count in (("train", 4), ("val", 1), ("test", 2)):
        make_folder(root / split, count)
    folder = photo_folder.load(root, min_side=32)
    assert [len(folder.names(s)) for s in photo_folder.SPLITS] == [4, 1, 2]
    assert all(name.startswith("test/") for name in folder.names("test"))
    shutil.rmtree(root / "val")
    carved = photo_folder.load(root, min_side=32, fractions=(0.6, 0.2, 0.2))
    assert [len(carved.names(s)) for s in photo_folder.SPLITS] == [3, 1, 2]
    assert "val: a seeded 25% of train" in carved.how


def test_broken_folders_are_refused_naming_each_file(tmp_path):
    root = make_folder(tmp_path / "photos", 5)
    (root / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    photo(7, size=(20, 90)).save(root / "c" / "small.png")
    with pytest.raises(DataError) as error:
        photo_folder.load(root, min_side=32)
    message = str(error.value)
    assert "2 problems" in message
    assert f"{root / 'a' / 'broken.jpg'}: cannot read the image" in message
    assert f"{root / 'c' / 'small.png'}: 20x90: too small for one 32x32 patch" in message

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.md").write_text("no photos here")
    with pytest.raises(DataError, match=f"{empty}: no photos found"):
        photo_folder.load(empty, min_side=32)
    with pytest.raises(DataError, match="no such folder"):
        photo_folder.load(tmp_path / "missing", min_side=32)
    two = make_folder(tmp_path / "two", 2)
    with pytest.raises(DataError, match="2 photo\\(s\\): a split needs at least 3"):
        photo_folder.load(two, min_side=32)


def test_split_folders_leave_nothing_outside_and_none_empty(tmp_path):
    root = tmp_path / "photos"
    make_folder(root / "train", 3)
    (root / "test").mkdir()
    photo(1).save(root / "stray.png")
    with pytest.raises(DataError) as error:
        photo_folder.load(root, min_side=32)
    assert f"{root / 'stray.png'}: outside the train/, val/ and test/ folders" in str(error.value)
    assert f"{root / 'test'}: no photos for the test split" in str(error.value)


def test_split_fractions_are_parsed_and_checked():
    assert photo_folder.parse_fractions("0.7,0.2,0.1") == (0.7, 0.2, 0.1)
    for bad in ("0.8,0.2", "0.5,0.5,0.5", "a,b,c", "0.9,0.1,0"):
        with pytest.raises(ValueError, match="TRAIN,VAL,TEST"):
            photo_folder.parse_fractions(bad)
