"""Scenes: Fashion-MNIST items on real photo backgrounds, with a per-pixel class mask.

No segmentation data set can be installed offline, so Kerve composes one from real
images: 1 to 4 Fashion-MNIST items (upscaled, randomly scaled, tinted, rotated a
little) placed on crops of scikit-image's bundled photos and textures. The mask
has 11 classes, ``background`` plus the 10 Fashion-MNIST labels; where items
overlap, the one on top owns the pixel.

    generator = SceneGenerator("train", image_size=128, seed=0)
    scene = generator.scene(17)          # the same scene for the same seed and index
    images, masks = generator.arrays(1000)

Test scenes take their items only from the Fashion-MNIST test split, and their
backgrounds from photos held out of training and validation or from the held-out
bottom quarter of the three textures (brick, grass, gravel), whose top three
quarters training uses: every kind of background a caption names is seen in
training, but never the same pixels. Validation items come from a fixed 15% of
the Fashion-MNIST training split. Each scene also carries its facts (items,
boxes, background) for the captioning task.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools

import numpy as np
from PIL import Image

from training.data import fashion_mnist, splits

CLASSES = ["background", *fashion_mnist.LABELS]
SPLITS = ("train", "val", "test")
VAL_ITEM_SEED = 2024  # fixes which Fashion-MNIST training items are validation items
MAX_ITEMS = 4
ITEM_THRESHOLD = 0.08  # a Fashion-MNIST pixel above this (0..1) belongs to the item
MIN_VISIBLE = 0.5  # every item keeps at least this fraction of its pixels in view
TEXTURE_TEST_ROWS = 0.25  # a shared texture's bottom rows, held out for test scenes


@dataclasses.dataclass(frozen=True)
class Background:
    name: str  # the skimage.data function
    kind: str  # what a caption may call it
    # "train" (train and validation scenes), "test", or "shared": a texture whose
    # top rows serve train and validation and whose bottom TEXTURE_TEST_ROWS serve test.
    split: str


BACKGROUNDS = {
    background.name: background
    for background in (
        Background("brick", "brick wall", "shared"),
        Background("grass", "grass", "shared"),
        Background("gravel", "gravel", "shared"),
        Background("camera", "photo", "train"),
        Background("astronaut", "photo", "train"),
        Background("coffee", "photo", "train"),
        Background("rocket", "photo", "train"),
        Background("stereo_motorcycle", "photo", "train"),
        Background("hubble_deep_field", "photo", "train"),
        Background("immunohistochemistry", "photo", "train"),
        Background("moon", "photo", "train"),
        Background("clock", "photo", "train"),
        # held out: only test scenes use these
        Background("chelsea", "photo", "test"),
        Background("coins", "photo", "test"),
        Background("cell", "photo", "test"),
    )
}


@dataclasses.dataclass(frozen=True)
class Item:
    """One placed item: what it is, where it came from, where it lies, how much shows."""

    label: str
    class_index: int  # index into CLASSES (1..10)
    source: tuple[str, int]  # (Fashion-MNIST split, index in it)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of its pixels, x1/y1 exclusive
    visible: float  # fraction of its pixels not covered by items above it
    colour: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 [size, size, 3]
    mask: np.ndarray  # uint8 [size, size], indices into CLASSES
    items: tuple[Item, ...]  # bottom to top
    background: Background


@dataclasses.dataclass(frozen=True)
class Placement:
    """A rendered item ready to be composed: colour, coverage, class and position."""

    rgb: np.ndarray  # uint8 [h, w, 3]
    alpha: np.ndarray  # bool [h, w]
    class_index: int
    x: int
    y: int


def compose(
    background: np.ndarray, placements: list[Placement]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint placements bottom to top: (image, class mask, index of the top item per pixel).

    The last array is -1 where the background shows.
    """
    image = background.copy()
    mask = np.zeros(background.shape[:2], np.uint8)
    owner = np.full(background.shape[:2], -1, np.int16)
    for number, placement in enumerate(placements):
        height, width = placement.alpha.shape
        region = np.s_[placement.y : placement.y + height, placement.x : placement.x + width]
        covered = placement.alpha
        image[region][covered] = placement.rgb[covered]
        mask[region][covered] = placement.class_index
        owner[region][covered] = number
    return image, mask, owner


class SceneGenerator:
    """Scenes of one split, each a pure function of (seed, split, index)."""

    def __init__(self, split: str, image_size: int = 128, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}")
        self.split = split
        self.image_size = image_size
        self.seed = seed
        self.items_split, self.item_indices = item_pool(split)
        self.item_images, self.item_labels = fashion_mnist.load(self.items_split)
        wanted = {"test", "shared"} if split == "test" else {"train", "shared"}
        self.backgrounds = [b for b in BACKGROUNDS.values() if b.split in wanted]

    def scene(self, index: int) -> Scene:
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        background = self.backgrounds[rng.integers(len(self.backgrounds))]
        canvas = background_crop(background, self.image_size, rng, test=self.split == "test")
        placements: list[Placement] = []
        items: list[tuple[int, tuple[int, int, int]]] = []
        for _ in range(rng.integers(1, MAX_ITEMS + 1)):
            source = int(self.item_indices[rng.integers(len(self.item_indices))])
            colour = random_colour(rng)
            rgb, alpha = render_item(self.item_images[source], self.image_size, colour, rng)
            class_index = int(self.item_labels[source]) + 1
            placement = self._place(rgb, alpha, class_index, placements, rng)
            if placement is not None:
                placements.append(placement)
                items.append((source, colour))
        image, mask, owner = compose(canvas, placements)
        return Scene(
            image=image,
            mask=mask,
            items=tuple(
                self._describe(placement, owner, number, source, colour)
                for number, (placement, (source, colour)) in enumerate(
                    zip(placements, items, strict=True)
                )
            ),
            background=background,
        )

    def arrays(self, count: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Scenes ``start .. start+count-1`` as (images uint8 [n,s,s,3], masks uint8 [n,s,s])."""
        size = self.image_size
        images = np.empty((count, size, size, 3), np.uint8)
        masks = np.empty((count, size, size), np.uint8)
        for offset in range(count):
            scene = self.scene(start + offset)
            images[offset], masks[offset] = scene.image, scene.mask
        return images, masks

    def _place(self, rgb, alpha, class_index, placed, rng) -> Placement | None:
        """A position where the new item leaves every earlier one mostly in view."""
        height, width = alpha.shape
        for _ in range(20):
            x = int(rng.integers(0, self.image_size - width + 1))
            y = int(rng.integers(0, self.image_size - height + 1))
            candidate = Placement(rgb, alpha, class_index, x, y)
            _, _, owner = compose(np.zeros((self.image_size, self.image_size, 3), np.uint8),
                                  [*placed, candidate])  # fmt: skip
            if all(
                (owner == number).sum() >= MIN_VISIBLE * earlier.alpha.sum()
                for number, earlier in enumerate(placed)
            ):
                return candidate
        return None  # crowded: the scene keeps fewer items

    def _describe(self, placement, owner, number, source, colour) -> Item:
        ys, xs = np.nonzero(placement.alpha)
        return Item(
            label=CLASSES[placement.class_index],
            class_index=placement.class_index,
            source=(self.items_split, source),
            box=(
                placement.x + int(xs.min()),
                placement.y + int(ys.min()),
                placement.x + int(xs.max()) + 1,
                placement.y + int(ys.max()) + 1,
            ),
            visible=float((owner == number).sum() / placement.alpha.sum()),
            colour=colour,
        )


def item_pool(split: str) -> tuple[str, np.ndarray]:
    """(Fashion-MNIST split, indices into it) that scenes of ``split`` draw items from."""
    if split == "test":
        _, labels = fashion_mnist.load("test")
        return "test", np.arange(len(labels))
    _, labels = fashion_mnist.load("train")
    train, val = splits.split_indices(labels, (0.85, 0.15), VAL_ITEM_SEED)
    return "train", train if split == "train" else val


def render_item(
    pixels: np.ndarray, image_size: int, colour: tuple[int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A 28x28 item upscaled to 25-55% of the scene, rotated up to 15 degrees, tinted."""
    side = int(round(rng.uniform(0.25, 0.55) * image_size))
    item = Image.fromarray(pixels, "L").resize((side, side), Image.Resampling.BICUBIC)
    item = item.rotate(float(rng.uniform(-15, 15)), Image.Resampling.BILINEAR, expand=True)
    if rng.random() < 0.5:
        item = item.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    intensity = np.asarray(item, np.float32) / 255.0
    alpha = intensity > ITEM_THRESHOLD
    rows, columns = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    crop = np.s_[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    # Shade by the item's own intensity, so its seams and folds stay visible.
    shade = 0.35 + 0.65 * intensity[crop][..., np.newaxis]
    rgb = np.clip(shade * np.asarray(colour, np.float32), 0, 255).astype(np.uint8)
    return rgb, alpha[crop]


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    hue, saturation, value = rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.6, 1.0)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def background_crop(
    background: Background, image_size: int, rng: np.random.Generator, test: bool = False
) -> np.ndarray:
    """A random square crop (35-100% of the short side) of a photo, flipped half the time.

    A shared texture is cropped from its held-out bottom rows for test scenes and
    from the rows above them otherwise.
    """
    photo = background_photo(background.name)
    if background.split == "shared":
        boundary = int(round(len(photo) * (1 - TEXTURE_TEST_ROWS)))
        photo = photo[boundary:] if test else photo[:boundary]
    height, width = photo.shape[:2]
    side = int(rng.uniform(0.35, 1.0) * min(height, width))
    y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side])
    crop = crop.resize((image_size, image_size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop)


@functools.cache
def background_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled images as uint8 RGB."""
    import skimage.data

    photo = getattr(skimage.data, name)()
    if isinstance(photo, tuple):  # stereo_motorcycle: (left, right, disparity)
        photo = photo[0]
    photo = np.asarray(photo)
    if photo.ndim == 2:
        photo = np.repeat(photo[..., np.newaxis], 3, axis=2)
    return np.ascontiguousarray(photo[..., :3]).astype(np.uint8)
