"""Named tensors: what a model version takes and returns, seen as the standard protocols see it.

Every runtime is also a tensors-in, tensors-out model: its samples are the inputs
(one plain array, or a structured array with a field per named input) and what its
``predict_batch`` returns are the outputs. The protocol routes (Open Inference
Protocol v2, TF Serving REST) speak in these terms; the datatype names of v2 are
declared here, once.
"""

from __future__ import annotations

import base64
import dataclasses

import numpy as np

from service.errors import BadRequest

# Open Inference Protocol v2 datatype <-> numpy dtype.
V2_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
BYTES = "BYTES"  # variable-length binary values: encoded images, for the runtimes that take them
_DATATYPE_OF = {dtype: name for name, dtype in V2_DATATYPES.items()}


def decode_b64(name: str, text: object) -> bytes:
    """A base64 string sent for input ``name`` (BadRequest if it is not one)."""
    if not isinstance(text, str):
        raise BadRequest(f"input {name!r}: a base64 value must be a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        raise BadRequest(f"input {name!r}: a value is not valid base64") from None


def encoded_images(values: list[bytes]) -> np.ndarray:
    """Encoded image files as the 1-D object array that ``infer_tensors`` decodes."""
    array = np.empty(len(values), object)
    array[:] = values
    return array


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 name of a numpy dtype (BadRequest-free: every served dtype has one)."""
    return _DATATYPE_OF[np.dtype(dtype)]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input or output: its dtype and one sample's shape (no batch axis)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        return v2_datatype(self.dtype)

    def batched_shape(self) -> list[int]:
        """The shape with -1 for the batch axis, as v2 metadata and TF Serving report it."""
        return [-1, *self.shape]


def specs_of(example: np.ndarray, plain_name: str) -> list[TensorSpec]:
    """The named tensors of a batch: a structured array's fields, else one tensor."""
    if example.dtype.names:
        return [
            TensorSpec(name, example.dtype[name].base, example.dtype[name].shape)
            for name in example.dtype.names
        ]
    return [TensorSpec(plain_name, example.dtype, example.shape[1:])]


def join(specs: list[TensorSpec], tensors: dict[str, np.ndarray], structured: bool) -> np.ndarray:
    """Named batches as one array of samples (BadRequest naming what does not fit)."""
    wanted = {spec.name for spec in specs}
    missing = sorted(wanted - tensors.keys())
    unknown = sorted(tensors.keys() - wanted)
    if missing or unknown:
        raise BadRequest(
            f"the model takes the inputs {sorted(wanted)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    sizes = set()
    for spec in specs:
        array = tensors[spec.name]
        if array.ndim == 0 or tuple(array.shape[1:]) != spec.shape:
            raise BadRequest(
                f"input {spec.name!r} has shape {list(array.shape)}; the model takes "
                f"{spec.batched_shape()}"
            )
        sizes.add(len(array))
    if len(sizes) != 1 or 0 in sizes:
        raise BadRequest(f"every input needs the same batch size, at least 1; got {sorted(sizes)}")
    if not structured:
        (spec,) = specs
        return _cast(tensors[spec.name], spec)
    dtype = np.dtype([(spec.name, spec.dtype, spec.shape) for spec in specs])
    samples = np.empty(sizes.pop(), dtype)
    for spec in specs:
        samples[spec.name] = _cast(tensors[spec.name], spec)
    return samples


def split(specs: list[TensorSpec], outputs: np.ndarray) -> dict[str, np.ndarray]:
    """A batch of outputs as named arrays, in the order of ``specs``."""
    if outputs.dtype.names:
        return {spec.name: np.ascontiguousarray(outputs[spec.name]) for spec in specs}
    (spec,) = specs
    return {spec.name: outputs}


def _cast(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``array`` as the spec's dtype, if no value changes (an int32 model takes 3.0, not 3.5)."""
    if array.dtype == spec.dtype:
        return array
    if array.dtype.kind not in "biuf":
        raise BadRequest(f"input {spec.name!r} must be numbers of type {spec.datatype}")
    cast = array.astype(spec.dtype)
    with np.errstate(invalid="ignore"):
        same = np.array_equal(cast, array, equal_nan=spec.dtype.kind == "f")
    if not same and not (spec.dtype.kind == "f" and array.dtype.kind in "biuf"):
        raise BadRequest(f"input {spec.name!r} holds values that are not {spec.datatype}")
    return cast
