"""Captions for scenes, written from their facts by a small grammar.

Each scene gets 3 to 5 reference captions that say the same facts in different
words: which items there are and how many ("two sneakers and a bag"), listed left
to right; the background ("on grass", "in front of a brick wall"); and, where two
items of different classes lie clearly apart, which is left of which.

    references = captions.describe(scene, rng)   # ["a bag and two sneakers on grass", ...]
    captions.item_counts("two trainers and a handbag on grass")  # {"sneaker": 2, "bag": 1}

Captions are lower case, words and commas separated by single spaces, so a
caption's tokens are ``caption.split()``. ``item_counts`` reads the items back
out of any caption in this grammar: fact accuracy compares them to the scene's.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from training.data import scenes

COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
MIN_REFERENCES = 3
MAX_REFERENCES = 5
RELATION_GAP = 0.2  # two items are "left of" each other when their centres lie this far apart
SYNONYM_RATE = 0.3  # how often a reference words an item or background other than canonically


@dataclasses.dataclass(frozen=True)
class Noun:
    singular: str
    plural: str


# Per class, the canonical noun first. "pair of trousers" counts as one item.
NOUNS: dict[str, tuple[Noun, ...]] = {
    "t-shirt/top": (Noun("t-shirt", "t-shirts"), Noun("top", "tops")),
    "trouser": (
        Noun("pair of trousers", "pairs of trousers"),
        Noun("pair of pants", "pairs of pants"),
    ),
    "pullover": (Noun("pullover", "pullovers"), Noun("sweater", "sweaters")),
    "dress": (Noun("dress", "dresses"),),
    "coat": (Noun("coat", "coats"), Noun("jacket", "jackets")),
    "sandal": (Noun("sandal", "sandals"),),
    "shirt": (Noun("shirt", "shirts"),),
    "sneaker": (Noun("sneaker", "sneakers"), Noun("trainer", "trainers")),
    "bag": (Noun("bag", "bags"), Noun("handbag", "handbags")),
    "ankle boot": (Noun("ankle boot", "ankle boots"), Noun("boot", "boots")),
}
# Per background kind, (preposition, noun phrase) wordings, the canonical first.
BACKGROUND_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "grass": (("on", "grass"), ("on", "the grass"), ("lying on", "the grass")),
    "gravel": (("on", "gravel"), ("on", "the gravel"), ("lying on", "gravel")),
    "brick wall": (("in front of", "a brick wall"), ("against", "a brick wall")),
    "photo": (("on", "a photo"), ("on top of", "a photo"), ("on", "a picture")),
}
SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")  # index 0 is padding


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a caption must say: item counts (left to right), background, a relation."""

    counts: tuple[tuple[str, int], ...]  # (class label, count), ordered by leftmost item
    background: str  # the background's kind
    relation: tuple[str, str] | None  # (label on the left, label on the right)


def facts(scene: scenes.Scene) -> Facts:
    size = scene.image.shape[1]
    centres = collections.defaultdict(list)
    for item in scene.items:
        centres[item.label].append((item.box[0] + item.box[2]) / 2 / size)
    order = sorted(centres, key=lambda label: min(centres[label]))
    singles = [label for label in order if len(centres[label]) == 1]
    relation = None
    if len(singles) >= 2:
        left, right = singles[0], singles[-1]
        if centres[right][0] - centres[left][0] >= RELATION_GAP:
            relation = (left, right)
    return Facts(
        counts=tuple((label, len(centres[label])) for label in order),
        background=scene.background.kind,
        relation=relation,
    )


def describe(scene: scenes.Scene, rng: np.random.Generator) -> list[str]:
    """3 to 5 distinct reference captions; the first uses only canonical words."""
    scene_facts = facts(scene)
    target = int(rng.integers(MIN_REFERENCES, MAX_REFERENCES + 1))
    references = [render(scene_facts, rng, canonical=True)]
    for _ in range(50):  # a one-item scene has fewer wordings than a crowded one
        if len(references) == target:
            break
        caption = render(scene_facts, rng)
        if caption not in references:
            references.append(caption)
    return references


def render(scene_facts: Facts, rng: np.random.Generator, canonical: bool = False) -> str:
    """One caption of the facts, in a template and wording drawn from ``rng``."""

    def pick(options):
        if canonical or len(options) == 1 or rng.random() >= SYNONYM_RATE:
            return options[0]
        return options[int(rng.integers(1, len(options)))]

    nouns = {label: pick(NOUNS[label]) for label, _ in scene_facts.counts}
    items = [_counted(nouns[label], count) for label, count in scene_facts.counts]
    listed = items[0] if len(items) == 1 else " , ".join(items[:-1]) + " and " + items[-1]
    preposition, place = pick(BACKGROUND_PHRASES[scene_facts.background])
    template = 0 if canonical else int(rng.integers(4))
    if template == 1:
        first_count = scene_facts.counts[0][1]
        caption = f"there {'is' if first_count == 1 else 'are'} {listed} {preposition} {place}"
    elif template == 2:
        caption = f"an image of {listed} {preposition} {place}"
    else:
        caption = f"{listed} {preposition} {place}"
    if scene_facts.relation is not None and (template == 3 or (canonical and rng.random() < 0.5)):
        left, right = (nouns[label].singular for label in scene_facts.relation)
        caption += f" with the {left} to the left of the {right}"
    return caption


def _counted(noun: Noun, count: int) -> str:
    if count == 1:
        article = "an" if noun.singular[0] in "aeiou" else "a"
        return f"{article} {noun.singular}"
    return f"{COUNT_WORDS[count]} {noun.plural}"


# -- reading captions back -----------------------------------------------------------------
def _phrases() -> dict[tuple[str, ...], tuple[str, int | None]]:
    """Every counted noun phrase's words -> (label, count); count None for a bare noun."""
    phrases = {}
    for label, nouns in NOUNS.items():
        for noun in nouns:
            for count in (1, *COUNT_WORDS):
                words = tuple(_counted(noun, count).split())
                phrases[words] = (label, count)
            phrases.setdefault(tuple(noun.singular.split()), (label, None))
    return phrases


PHRASES = _phrases()
LONGEST_PHRASE = max(len(words) for words in PHRASES)


def item_counts(caption: str) -> dict[str, int]:
    """The items a caption names with their counts ({} if it names none).

    Only counted phrases ("a bag", "two sneakers") count; "the bag" in a relation
    refers back to an item already named.
    """
    words = caption.split()
    counts: dict[str, int] = collections.Counter()
    position = 0
    while position < len(words):
        for length in range(LONGEST_PHRASE, 0, -1):
            match = PHRASES.get(tuple(words[position : position + length]))
            if match is not None and match[1] is not None:
                counts[match[0]] += match[1]
                position += length
                break
        else:
            position += 1
    return dict(counts)


def background_kind(caption: str) -> str | None:
    """The background kind a caption names, or None."""
    for kind, phrases in BACKGROUND_PHRASES.items():
        if any(f" {preposition} {place}" in f" {caption}" for preposition, place in phrases):
            return kind
    return None


def vocabulary(captions: list[str]) -> list[str]:
    """The special tokens, then every word of ``captions`` sorted (index = token id)."""
    words = sorted({word for caption in captions for word in caption.split()})
    return [*SPECIAL_TOKENS, *words]
