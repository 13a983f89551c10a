"""Train/validation/test splits that are disjoint, stratified and stable for a seed."""

from __future__ import annotations

import numpy as np

DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def split_indices(
    labels: np.ndarray, fractions: tuple[float, ...] = DEFAULT_FRACTIONS, seed: int = 1337
) -> list[np.ndarray]:
    """Indices of each part, class by class in the given fractions, each part sorted."""
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.round(np.cumsum(fractions)[:-1] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, bounds), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(part)) for part in parts]


def subsample(labels: np.ndarray, size: int | None, seed: int = 1337) -> np.ndarray:
    """A stratified subset of ``size`` indices (all of them when size is None)."""
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    fraction = size / len(labels)
    return split_indices(labels, (fraction, 1 - fraction), seed)[0]


def split_names(
    names: list[str], fractions: tuple[float, ...] = DEFAULT_FRACTIONS, seed: int = 1337
) -> list[list[str]]:
    """``names`` (file stems, say) in parts of the given fractions, each part sorted.

    The names are sorted before the seeded shuffle, so the parts depend only on the
    set of names and the seed, never on the order a directory listing gave. Each part
    with a non-zero fraction keeps at least one name while there are enough names.
    """
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    ordered = sorted(set(names))
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    counts = np.floor(np.asarray(fractions) * len(shuffled)).astype(int)
    largest = int(np.argmax(fractions))
    for index, fraction in enumerate(fractions):  # no empty part while names can be spared
        if fraction > 0 and counts[index] == 0:
            if counts.sum() < len(shuffled):
                counts[index] = 1
            elif counts[largest] > 1:
                counts[largest] -= 1
                counts[index] = 1
    counts[largest] += len(shuffled) - counts.sum()  # what rounding left over
    parts = np.split(np.array(shuffled, dtype=object), np.cumsum(counts)[:-1])
    return [sorted(str(name) for name in part) for part in parts]


def complete_splits(
    named: dict[str, list[str]], seed: int = 1337, val_fraction: float = 0.15
) -> tuple[dict[str, list[str]], str]:
    """Train/val/test from a data set's own split lists ({"train", "val"[, "test"]}), and
    how they were made. Without a test list the given val list becomes the test split
    (the published figures of PASCAL VOC and others are on val) and validation is a
    seeded ``val_fraction`` of train."""
    if "test" in named:
        return {part: named[part] for part in ("train", "val", "test")}, "as listed"
    train, val = split_names(named["train"], (1 - val_fraction, val_fraction), seed)
    how = f"test = the val list; val = a seeded {val_fraction:.0%} of train (seed {seed})"
    return {"train": train, "val": val, "test": named["val"]}, how


def check_disjoint(named: dict[str, list[str]], files: dict, problems) -> None:
    """Add a problem (to an image_files.Problems) for each name in two split lists."""
    owner: dict[str, str] = {}
    for part, names in named.items():
        for name in names:
            if name in owner:
                problems.add(files[part], f"{name!r} is also in {files[owner[name]].name}")
            owner.setdefault(name, part)
