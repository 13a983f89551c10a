"""The wire format of Open Inference Protocol v2 inference over REST.

A request is JSON; with the binary tensor data extension the first
``Inference-Header-Content-Length`` bytes of the body are that JSON and the rest
holds, in input order, the bytes of each input whose ``parameters.binary_data_size``
is set: little-endian and row-major, a BYTES element as a 4-byte little-endian
length then its bytes. A response takes the same form when any output is binary.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import fastapi
import numpy as np
import pydantic

from service.errors import BadRequest
from service.tensors import BYTES, V2_DATATYPES, decode_b64, encoded_images, v2_datatype

HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix


class InputParameters(pydantic.BaseModel, extra="allow"):
    binary_data_size: pydantic.NonNegativeInt | None = None
    content_type: str | None = None  # "base64": JSON BYTES elements are base64 (as MLServer)


class RequestInput(pydantic.BaseModel):
    name: str
    shape: list[pydantic.NonNegativeInt]
    datatype: str
    parameters: InputParameters = InputParameters()
    data: Any = None


class OutputParameters(pydantic.BaseModel, extra="allow"):
    binary_data: bool | None = None  # None: as the request's binary_data_output says


class RequestOutput(pydantic.BaseModel):
    name: str
    parameters: OutputParameters = OutputParameters()


class RequestParameters(pydantic.BaseModel, extra="allow"):
    binary_data_output: bool = False


class InferenceRequest(pydantic.BaseModel):
    id: str | None = None
    parameters: RequestParameters = RequestParameters()
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


def read_header(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The request's JSON, and the binary tensor data that follows it."""
    size = len(body)
    if header_length is not None:
        text = header_length.strip()
        size = int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else 0
        if not 0 < size <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} must be between 1 and the body's {len(body)} bytes")
    try:
        return InferenceRequest.model_validate_json(body[:size]), body[size:]
    except pydantic.ValidationError as error:
        problems = (f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        raise BadRequest("; ".join(problems)) from None


def read_inputs(request: InferenceRequest, binary: bytes) -> dict[str, np.ndarray]:
    """Each input's data as an array of its declared datatype and shape."""
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in arrays:
            raise BadRequest(f"input {tensor.name!r} appears twice")
        size = tensor.parameters.binary_data_size
        if size is None:
            arrays[tensor.name] = _from_json(tensor)
            continue
        if tensor.data is not None:
            raise BadRequest(f"input {tensor.name!r} has both data and binary_data_size")
        chunk = binary[offset : offset + size]
        if len(chunk) != size:
            raise BadRequest(f"input {tensor.name!r}: binary_data_size runs past the body's end")
        arrays[tensor.name] = _from_bytes(tensor, chunk)
        offset += size
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary) - offset} bytes no binary_data_size covers")
    return arrays


def _from_json(tensor: RequestInput) -> np.ndarray:
    if tensor.data is None:
        raise BadRequest(f"input {tensor.name!r} has neither data nor binary_data_size")
    try:
        raw = np.asarray(tensor.data, dtype=object if tensor.datatype == BYTES else None)
    except ValueError:
        raise BadRequest(f"input {tensor.name!r}: data is not a regular array") from None
    if tensor.datatype == BYTES:
        return _shaped(tensor, _bytes_of(tensor, raw.ravel()))
    dtype = _dtype(tensor)
    if raw.dtype.kind not in "biuf":
        raise BadRequest(f"input {tensor.name!r}: data must be numbers of type {tensor.datatype}")
    array = raw.astype(dtype)
    if dtype.kind != "f" and not np.array_equal(array, raw):
        raise BadRequest(f"input {tensor.name!r} holds values that are not {tensor.datatype}")
    return _shaped(tensor, array.ravel())


def _bytes_of(tensor: RequestInput, values: np.ndarray) -> np.ndarray:
    """JSON BYTES elements (strings, UTF-8; base64 with content_type "base64") as bytes."""
    if not all(isinstance(value, str) for value in values):
        raise BadRequest(f"input {tensor.name!r}: BYTES data must be strings")
    if tensor.parameters.content_type == "base64":
        return encoded_images([decode_b64(tensor.name, value) for value in values])
    try:
        return encoded_images([value.encode() for value in values])
    except UnicodeEncodeError as error:  # lone surrogates
        raise BadRequest(f"input {tensor.name!r}: {error}") from None


def _from_bytes(tensor: RequestInput, chunk: bytes) -> np.ndarray:
    if tensor.datatype == BYTES:
        return _shaped(tensor, _split_bytes(tensor.name, chunk))
    dtype = _dtype(tensor)
    expected = math.prod(tensor.shape) * dtype.itemsize
    if len(chunk) != expected:
        raise BadRequest(
            f"input {tensor.name!r}: binary_data_size is {len(chunk)} bytes, but shape "
            f"{tensor.shape} of {tensor.datatype} takes {expected}"
        )
    return np.frombuffer(chunk, dtype.newbyteorder("<")).astype(dtype).reshape(tensor.shape)


def _split_bytes(name: str, chunk: bytes) -> np.ndarray:
    """Serialised BYTES elements (length-prefixed) as a 1-D object array of bytes."""
    values, offset = [], 0
    while offset < len(chunk):
        if offset + _LENGTH.size > len(chunk):
            raise BadRequest(f"input {name!r}: a BYTES element's length is cut off")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += _LENGTH.size + length
        if offset > len(chunk):
            raise BadRequest(f"input {name!r}: a BYTES element runs past its binary_data_size")
        values.append(chunk[offset - length : offset])
    return encoded_images(values)


def _dtype(tensor: RequestInput) -> np.dtype:
    if tensor.datatype not in V2_DATATYPES:
        known = sorted([*V2_DATATYPES, BYTES])
        raise BadRequest(
            f"input {tensor.name!r}: datatype {tensor.datatype!r} is not one of {known}"
        )
    return V2_DATATYPES[tensor.datatype]


def _shaped(tensor: RequestInput, values: np.ndarray) -> np.ndarray:
    if values.size != math.prod(tensor.shape):
        raise BadRequest(
            f"input {tensor.name!r} has {values.size} values; shape {tensor.shape} "
            f"takes {math.prod(tensor.shape)}"
        )
    return values.reshape(tensor.shape)


def write_response(
    header: dict[str, Any], outputs: list[tuple[str, np.ndarray, bool]]
) -> fastapi.Response:
    """The response: ``header`` with an entry per (name, array, binary) output, then the
    binary outputs' bytes (with ``Inference-Header-Content-Length``) if there are any."""
    entries, chunks = [], []
    for name, array, binary in outputs:
        entry = {"name": name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape)}
        if binary:
            chunks.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    text = json.dumps({**header, "outputs": entries}, separators=(",", ":")).encode()
    if not any(binary for _, _, binary in outputs):
        return fastapi.Response(text, media_type="application/json")
    return fastapi.Response(
        text + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(text))},
    )
