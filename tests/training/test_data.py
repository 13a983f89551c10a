from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from training.data import fashion_mnist, splits


def test_splits_are_disjoint_complete_stratified_and_stable():
    labels = np.repeat(np.arange(4), [100, 60, 40, 200])
    train, val, test = splits.split_indices(labels, seed=7)
    together = np.concatenate([train, val, test])
    assert len(together) == len(labels) == len(np.unique(together))  # disjoint, complete
    assert abs(len(train) / len(labels) - 0.70) < 0.01
    for label, count in enumerate([100, 60, 40, 200]):
        assert abs((labels[val] == label).sum() - 0.15 * count) <= 1
    again = splits.split_indices(labels, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    other = splits.split_indices(labels, seed=8)
    assert not np.array_equal(train, other[0])


def test_subsample_is_stratified():
    labels = np.repeat(np.arange(10), 100)
    keep = splits.subsample(labels, 200, seed=1)
    assert len(keep) == 200
    assert np.bincount(labels[keep]).tolist() == [20] * 10
    assert len(splits.subsample(labels, None)) == 1000


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError):
        splits.split_indices(np.zeros(10, int), (0.5, 0.6))


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_from_the_configured_folder(tmp_path, monkeypatch):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 0, 4]))
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    loaded_images, loaded_labels = fashion_mnist.load("test")
    np.testing.assert_array_equal(loaded_images, images)
    assert loaded_labels.tolist() == [9, 0, 4]


def test_fashion_mnist_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))  # empty, and no internet

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    import keras

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load("train")
