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
