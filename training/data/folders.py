"""Images in class folders (``DIR/<class>/*.jpg``), as keras.utils loads them."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np


def load(directory: Path, image_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [n, size, size, 3], labels [n], class names) of a class-folder tree."""
    dataset = keras.utils.image_dataset_from_directory(
        directory, image_size=(image_size, image_size), batch_size=256, shuffle=False,
        label_mode="int", color_mode="rgb",
    )  # fmt: skip
    images, labels = [], []
    for batch_images, batch_labels in dataset.as_numpy_iterator():
        images.append(batch_images.astype(np.uint8))
        labels.append(batch_labels.astype(np.int64))
    if not images:
        raise ValueError(f"no images found under {directory}")
    return np.concatenate(images), np.concatenate(labels), list(dataset.class_names)
