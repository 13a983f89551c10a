"""Read a legacy (pre-1.6, non-zip) PyTorch checkpoint into numpy arrays, without torch.

The legacy format is a sequence of pickles in one file: a magic number, the
protocol version, system info, the object itself (typically a state dict) whose
tensors refer to storages by key, then the list of storage keys; after that, for
each storage in that order, its element count (8 bytes, little-endian) and its
raw bytes. Tensors are views into storages: an offset, a shape and strides, which
may not be contiguous.

Only the handful of torch names a state dict needs are allowed through the
unpickler; anything else is refused, so a checkpoint cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _StorageRef:
    """A storage not yet read: the tensors made from it are filled in at the end."""

    def __init__(self, key: str, dtype: np.dtype) -> None:
        self.key = key
        self.dtype = dtype


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, shape: tuple, strides: tuple) -> None:
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _TensorRef:
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, _size = saved_id[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        return _StorageRef(key, storage_type.dtype)


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy PyTorch checkpoint, by name, as numpy arrays."""
    with open(path, "rb") as file:
        if pickle.load(file) != MAGIC_NUMBER:  # plain ints: the stock unpickler is safe
            raise ValueError(f"{path} is not a legacy PyTorch checkpoint (bad magic number)")
        pickle.load(file)  # protocol version
        pickle.load(file)  # system info
        state = _Unpickler(file).load()
        keys = pickle.load(file)
        storages = {}
        for key in keys:
            dtype = _storage_dtype(state, key)
            (count,) = struct.unpack("<q", file.read(8))
            data = file.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise ValueError(f"{path} is truncated in storage {key}")
            storages[key] = np.frombuffer(data, dtype)
    return {name: _materialise(tensor, storages) for name, tensor in state.items()}


def _storage_dtype(state: dict, key: str) -> np.dtype:
    for tensor in state.values():
        if isinstance(tensor, _TensorRef) and tensor.storage.key == key:
            return tensor.storage.dtype
    raise ValueError(f"storage {key} is used by no tensor")


def _materialise(tensor: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    storage = storages[tensor.storage.key]
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[tensor.offset :],
        shape=tensor.shape,
        strides=tuple(step * itemsize for step in tensor.strides),
        writeable=False,
    )
    return np.array(view, order="C")  # a C-ordered copy, whatever the strides were
