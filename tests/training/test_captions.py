"""The caption grammar: true to the scene's facts, varied, and readable back."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import captions, scenes


@pytest.fixture(scope="module")
def described():
    generator = scenes.SceneGenerator("train", 64, seed=5)
    rng = np.random.default_rng(0)
    return [(scene, captions.describe(scene, rng)) for scene in map(generator.scene, range(150))]


def test_every_reference_names_the_scenes_items_counts_and_background(described):
    for scene, references in described:
        truth = {}
        for item in scene.items:
            truth[item.label] = truth.get(item.label, 0) + 1
        for reference in references:
            assert captions.item_counts(reference) == truth, reference
            assert captions.background_kind(reference) == scene.background.kind, reference


def test_three_to_five_distinct_references_the_first_canonical(described):
    for scene, references in described:
        assert captions.MIN_REFERENCES <= len(references) <= captions.MAX_REFERENCES
        assert len(set(references)) == len(references)
        canonical = captions.render(captions.facts(scene), np.random.default_rng(1), canonical=True)
        assert references[0].split(" with ")[0] == canonical.split(" with ")[0]


def test_items_are_listed_left_to_right_and_relations_are_true(described):
    relations = 0
    for scene, _ in described:
        facts = captions.facts(scene)
        leftmost = {}
        for item in scene.items:
            leftmost[item.label] = min(leftmost.get(item.label, 1e9), item.box[0] + item.box[2])
        assert [label for label, _ in facts.counts] == sorted(leftmost, key=leftmost.get)
        if facts.relation is not None:
            relations += 1
            left, right = (
                next(i for i in scene.items if i.label == label) for label in facts.relation
            )
            gap = (right.box[0] + right.box[2] - left.box[0] - left.box[2]) / 2 / 64
            assert gap >= captions.RELATION_GAP
    assert relations > 10  # the grammar does say where things are


def test_counts_and_synonyms_read_back():
    assert captions.item_counts("two trainers and a handbag on grass") == {"sneaker": 2, "bag": 1}
    assert captions.item_counts("there are three pairs of pants , an ankle boot on gravel") == {
        "trouser": 3,
        "ankle boot": 1,
    }
    # "the bag" refers back to an item already counted; "top of" is not a top
    caption = "a bag and a shirt on top of a photo with the bag to the left of the shirt"
    assert captions.item_counts(caption) == {"bag": 1, "shirt": 1}
    assert captions.background_kind(caption) == "photo"
    assert captions.item_counts("on a photo") == {}
    assert captions.background_kind("two bags") is None


def test_vocabulary_puts_the_special_tokens_first():
    vocabulary = captions.vocabulary(["a bag on grass", "two bags on grass"])
    assert vocabulary[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert vocabulary[4:] == ["a", "bag", "bags", "grass", "on", "two"]
