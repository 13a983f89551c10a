"""The scenes generator: deterministic, masks true to placement, test split held out."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import scenes

SIZE = 64


@pytest.fixture(scope="module")
def train_generator():
    return scenes.SceneGenerator("train", SIZE, seed=3)


def square(class_index: int, colour, x: int, y: int, side: int) -> scenes.Placement:
    rgb = np.broadcast_to(np.array(colour, np.uint8), (side, side, 3)).copy()
    return scenes.Placement(rgb, np.ones((side, side), bool), class_index, x, y)


def test_compose_gives_overlaps_to_the_item_on_top():
    background = np.full((20, 20, 3), 7, np.uint8)
    bottom, top = square(3, (200, 0, 0), 2, 2, 10), square(8, (0, 0, 200), 8, 8, 10)
    image, mask, owner = scenes.compose(background, [bottom, top])
    assert mask[5, 5] == 3 and tuple(image[5, 5]) == (200, 0, 0)  # bottom only
    assert mask[10, 10] == 8 and tuple(image[10, 10]) == (0, 0, 200)  # overlap: top wins
    assert mask[17, 17] == 8 and mask[0, 19] == 0 and tuple(image[0, 19]) == (7, 7, 7)
    assert (mask == 3).sum() == 100 - 4 * 4 and (mask == 8).sum() == 100
    assert np.array_equal(owner >= 0, mask > 0)


def test_compose_respects_the_item_shape():
    alpha = np.array([[1, 0], [0, 1]], bool)
    item = scenes.Placement(np.full((2, 2, 3), 255, np.uint8), alpha, 5, 1, 1)
    _, mask, _ = scenes.compose(np.zeros((4, 4, 3), np.uint8), [item])
    assert mask.tolist() == [[0, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 0]]


def test_scenes_are_deterministic_per_seed(train_generator):
    again = scenes.SceneGenerator("train", SIZE, seed=3)
    for index in (0, 5, 41):
        first, second = train_generator.scene(index), again.scene(index)
        assert np.array_equal(first.image, second.image)
        assert np.array_equal(first.mask, second.mask)
        assert first.items == second.items and first.background == second.background
    other = scenes.SceneGenerator("train", SIZE, seed=4).scene(0)
    assert not np.array_equal(other.image, train_generator.scene(0).image)
    images, masks = train_generator.arrays(3, start=5)
    assert np.array_equal(images[0], train_generator.scene(5).image)
    assert images.shape == (3, SIZE, SIZE, 3) and masks.shape == (3, SIZE, SIZE)


def test_masks_agree_with_the_items_facts(train_generator):
    for index in range(30):
        scene = train_generator.scene(index)
        assert 1 <= len(scene.items) <= scenes.MAX_ITEMS
        inside_a_box = np.zeros_like(scene.mask, bool)
        for item in scene.items:
            x0, y0, x1, y1 = item.box
            inside_a_box[y0:y1, x0:x1] = True
            assert scenes.CLASSES[item.class_index] == item.label
            assert item.visible >= scenes.MIN_VISIBLE
            assert (scene.mask[y0:y1, x0:x1] == item.class_index).any()
        assert not scene.mask[~inside_a_box].any()  # nothing labelled outside every item
        classes_in_mask = set(np.unique(scene.mask)) - {0}
        assert classes_in_mask == {item.class_index for item in scene.items}
        assert scene.mask.max() < len(scenes.CLASSES)


def test_a_fully_visible_item_owns_exactly_its_pixels(train_generator):
    checked = 0
    for index in range(40):
        scene = train_generator.scene(index)
        for item in scene.items:
            same_class = [i for i in scene.items if i.class_index == item.class_index]
            if item.visible == 1.0 and len(same_class) == 1:
                x0, y0, x1, y1 = item.box
                # Its box's edges touch its own pixels: the box is tight.
                crop = scene.mask[y0:y1, x0:x1] == item.class_index
                assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
                checked += 1
    assert checked > 10


def test_test_scenes_never_use_training_items_or_backgrounds():
    test = scenes.SceneGenerator("test", SIZE, seed=3)
    train = scenes.SceneGenerator("train", SIZE, seed=3)
    val = scenes.SceneGenerator("val", SIZE, seed=3)
    train_photos = {b.name for b in train.backgrounds if b.split != "shared"}
    assert {b.name for b in train.backgrounds} == {b.name for b in val.backgrounds}
    assert not train_photos & {b.name for b in test.backgrounds}
    # every kind of background a caption names appears in training
    assert {b.kind for b in test.backgrounds} <= {b.kind for b in train.backgrounds}
    assert not set(train.item_indices) & set(val.item_indices)
    for index in range(40):
        scene = test.scene(index)
        assert scene.background.split in ("test", "shared")
        assert all(item.source[0] == "test" for item in scene.items)
    sources = {item.source for i in range(40) for item in val.scene(i).items}
    assert all(split == "train" and index in set(val.item_indices) for split, index in sources)


def test_shared_textures_give_test_scenes_only_their_held_out_rows(monkeypatch):
    # A texture that is dark above the held-out boundary and bright below it.
    texture = np.zeros((400, 400, 3), np.uint8)
    texture[int(400 * (1 - scenes.TEXTURE_TEST_ROWS)) :] = 255
    monkeypatch.setattr(scenes, "background_photo", lambda name: texture)
    grass = scenes.BACKGROUNDS["grass"]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert scenes.background_crop(grass, SIZE, rng, test=True).min() == 255
        assert scenes.background_crop(grass, SIZE, rng, test=False).max() == 0


def test_items_keep_their_fashion_mnist_class():
    test = scenes.SceneGenerator("test", SIZE, seed=0)
    for index in range(10):
        for item in test.scene(index).items:
            assert test.item_labels[item.source[1]] + 1 == item.class_index


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        scenes.SceneGenerator("holdout")
    with pytest.raises(ValueError, match="image_size"):
        scenes.SceneGenerator("train", image_size=8)
