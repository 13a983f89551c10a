"""Fashion-MNIST (Xiao et al. 2017): 70,000 28x28 grayscale fashion items, 10 classes.

Read from the Debian package ``dataset-fashion-mnist`` (IDX files), from
``$FASHION_MNIST_DIR``, or else downloaded by Keras; fails with what to install.
``ensure_available`` gets it where the machine allows (apt as root, else Keras).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

LABELS = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
IMAGE_SIZE = 28
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels int64 [n]) of the official train or test split."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    for directory in _candidate_dirs():
        images_file, labels_file = (directory / name for name in FILES[split])
        if images_file.exists() and labels_file.exists():
            return read_idx(images_file), read_idx(labels_file).astype(np.int64)
    return _download(split)


def ensure_available() -> str | None:
    """None once Fashion-MNIST can be loaded, fetching it where the machine allows: the
    Debian package when root with apt-get, else the Keras download. Else why not, with
    how to get it, in one line. A set ``$FASHION_MNIST_DIR`` is the only place looked at."""
    if _found():
        return None
    configured = os.environ.get("FASHION_MNIST_DIR")
    if configured:
        return (
            f"Fashion-MNIST is not in FASHION_MNIST_DIR={configured}: put its IDX files "
            "there, or unset it for apt-get install dataset-fashion-mnist"
        )
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("Fashion-MNIST: apt-get install dataset-fashion-mnist ...", flush=True)
        install = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for commands in ([install], [["apt-get", "update", "-q"], install]):
            runs = (subprocess.run(c, env=environment, stdin=subprocess.DEVNULL) for c in commands)
            if all(run.returncode == 0 for run in runs) and _found():
                return None
    try:
        _download("test")  # Keras caches all of it (~/.keras/datasets)
    except FileNotFoundError:
        return (
            "Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist (as root), "
            "or go online for the Keras download"
        )
    return None


def _found() -> bool:
    return any(
        all((directory / name).exists() for names in FILES.values() for name in names)
        for directory in _candidate_dirs()
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array of its stored shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as file:
        data = file.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _candidate_dirs() -> list[Path]:
    configured = os.environ.get("FASHION_MNIST_DIR")
    return [Path(configured)] if configured else [DEBIAN_DIR]


def _download(split: str) -> tuple[np.ndarray, np.ndarray]:
    import keras

    try:
        (train_x, train_y), (test_x, test_y) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        raise FileNotFoundError(
            "Fashion-MNIST not found: install the Debian package (apt-get install "
            "dataset-fashion-mnist), set FASHION_MNIST_DIR to a folder with its IDX files, "
            f"or go online for the Keras download ({type(error).__name__}: {error})"
        ) from error
    return (train_x, train_y.astype(np.int64)) if split == "train" else (test_x, test_y)
