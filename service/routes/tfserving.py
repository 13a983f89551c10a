"""TensorFlow Serving's REST API: predict and metadata, for every model as named tensors.

POST /v1/models/{name}[/versions/{version}]:predict takes the row format
(``{"instances": [...]}``, answered ``{"predictions": [...]}``) or the columnar
format (``{"inputs": ...}``, answered ``{"outputs": ...}``); a value that is
``{"b64": "..."}`` is binary: an encoded image, for the runtimes that take them.
GET /v1/models/{name}[/versions/{version}]/metadata describes the tensors as TF
Serving's ``serving_default`` signature. Errors travel as ``{"error": "message"}``.
"""

from __future__ import annotations

import json
from typing import Any

import fastapi
import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from service import tensors
from service.errors import BadRequest
from service.routes.params import (
    limit_encoded_images,
    protocol_route,
    resolve_model,
    unless_disconnected,
)
from service.runtimes import Runtime

router = fastapi.APIRouter(tags=["TF Serving protocol"])

SIGNATURE = "serving_default"
# numpy dtype -> TensorFlow DataType name, as TF Serving's metadata reports it.
TF_DATATYPES: dict[np.dtype, str] = {
    np.dtype(np.float32): "DT_FLOAT",
    np.dtype(np.float64): "DT_DOUBLE",
    np.dtype(np.float16): "DT_HALF",
    np.dtype(np.int8): "DT_INT8",
    np.dtype(np.int16): "DT_INT16",
    np.dtype(np.int32): "DT_INT32",
    np.dtype(np.int64): "DT_INT64",
    np.dtype(np.uint8): "DT_UINT8",
    np.dtype(np.uint16): "DT_UINT16",
    np.dtype(np.uint32): "DT_UINT32",
    np.dtype(np.uint64): "DT_UINT64",
    np.dtype(np.bool_): "DT_BOOL",
}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "signature_name": {"enum": [SIGNATURE, ""], "default": SIGNATURE},
                        "instances": {"type": "array", "minItems": 1, "description": "Row format."},
                        "inputs": {"description": "Columnar format: a tensor, or name: tensor."},
                    },
                    "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
                },
                "example": {"instances": [[0.5, 1.0, 2.0]]},
            }
        },
    }
}


class TFServingJSON(fastapi.responses.JSONResponse):
    """JSON that may hold NaN and Infinity, as TF Serving's does."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


# -- predict --------------------------------------------------------------------------
@router.post(
    "/v1/models/{name}:predict",
    name="tfserving_predict_model",
    summary="Predict with the newest version (TF Serving REST)",
    openapi_extra=PREDICT_BODY,
)
@router.post(
    "/v1/models/{name}/versions/{version}:predict",
    name="tfserving_predict_version",
    summary="Predict with one model version (TF Serving REST)",
    openapi_extra=PREDICT_BODY,
)
@protocol_route("predict")
async def predict(request: fastapi.Request, name: str, version: str | None = None) -> TFServingJSON:
    """Row (``instances``) or columnar (``inputs``) request, TF Serving's way."""
    runtime = resolve_model(request, name, version)
    body = await request.body()
    # JSON numbers to arrays and back cost milliseconds per image: off the event loop.
    rows, inputs = await run_in_threadpool(_read_inputs, runtime, body)
    _check_binary(request, runtime, inputs)
    outputs = await unless_disconnected(request, runtime.infer_tensors(inputs))
    return await run_in_threadpool(_answer, rows, outputs)


def _read_inputs(runtime: Runtime, body: bytes) -> tuple[bool, dict[str, np.ndarray]]:
    """(row format?, the inputs as arrays by name) of a request body."""
    document = _read_json(body)
    signature = document.get("signature_name", SIGNATURE)
    if signature not in ("", SIGNATURE):
        raise BadRequest(f"serving signature {signature!r} not found; the model has {SIGNATURE!r}")
    if ("instances" in document) == ("inputs" in document):
        raise BadRequest('the request needs either "instances" (row format) or "inputs" (columns)')
    rows = "instances" in document
    columns = (
        _row_columns(runtime, document["instances"])
        if rows
        else _columns(runtime, document["inputs"])
    )
    return rows, {input_name: _array(input_name, value) for input_name, value in columns.items()}


def _answer(rows: bool, outputs: dict[str, np.ndarray]) -> TFServingJSON:
    if rows:
        return TFServingJSON({"predictions": _rows(outputs)})
    if len(outputs) == 1:
        return TFServingJSON({"outputs": next(iter(outputs.values())).tolist()})
    return TFServingJSON({"outputs": {key: value.tolist() for key, value in outputs.items()}})


def _read_json(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)  # 4x json's speed on a 224x224x3 image of numbers
    except orjson.JSONDecodeError:
        try:  # NaN and Infinity, which TF Serving takes and strict JSON (orjson) does not
            document = json.loads(body)
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            raise BadRequest(f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadRequest('the body must be a JSON object with "instances" or "inputs"')
    return document


def _row_columns(runtime: Runtime, instances: Any) -> dict[str, list]:
    """Row format: a list of values (one input) or of objects (named inputs), per sample."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a list of one or more samples')
    named = [isinstance(item, dict) and not _is_b64(item) for item in instances]
    if not any(named):
        return {_only_input(runtime): instances}
    if not all(named):
        raise BadRequest('"instances" mixes objects of named inputs with plain values')
    keys = instances[0].keys()
    for index, item in enumerate(instances):
        if item.keys() != keys:
            raise BadRequest(
                f"instance {index} has the inputs {sorted(item)}; instance 0 has {sorted(keys)}"
            )
    return {key: [item[key] for item in instances] for key in keys}


def _columns(runtime: Runtime, inputs: Any) -> dict[str, Any]:
    """Columnar format: one batched value (one input), or an object of them by name."""
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return inputs
    return {_only_input(runtime): inputs}


def _only_input(runtime: Runtime) -> str:
    specs = runtime.tensor_inputs
    if len(specs) != 1:
        names = [spec.name for spec in specs]
        raise BadRequest(f"the model takes the inputs {names}; send each by name")
    return specs[0].name


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and value.keys() == {"b64"}


def _array(name: str, value: Any) -> np.ndarray:
    """One input's batch as an array: numbers, or a list of ``{"b64"}`` values as bytes."""
    if isinstance(value, list) and value and all(_is_b64(item) for item in value):
        return tensors.encoded_images([tensors.decode_b64(name, item["b64"]) for item in value])
    try:
        array = np.asarray(value)
    except (ValueError, RecursionError):
        raise BadRequest(
            f"input {name!r} is not a rectangular array: its nested lists differ in length or depth"
        ) from None
    if array.dtype.kind not in "biuf":
        raise BadRequest(
            f'input {name!r} must hold numbers (binary values, as {{"b64": ...}}, only as a '
            "list of encoded images, one per sample)"
        )
    return array


def _check_binary(
    request: fastapi.Request, runtime: Runtime, inputs: dict[str, np.ndarray]
) -> None:
    """Binary values only where the runtime decodes images, and no more than a task route's."""
    for name, array in inputs.items():
        if array.dtype != object:
            continue
        if not runtime.takes_encoded_images:
            raise BadRequest(f"input {name!r} takes numbers; binary (b64) values are not accepted")
    limit_encoded_images(request, inputs)


def _rows(outputs: dict[str, np.ndarray]) -> list:
    """Row format's predictions: per sample, the output value, or an object of them by name."""
    if len(outputs) == 1:
        return next(iter(outputs.values())).tolist()
    columns = {name: value.tolist() for name, value in outputs.items()}
    size = len(next(iter(columns.values())))
    return [{name: column[index] for name, column in columns.items()} for index in range(size)]


# -- metadata -------------------------------------------------------------------------
@router.get(
    "/v1/models/{name}/metadata", summary="Signature of the newest version (TF Serving REST)"
)
@protocol_route()
async def metadata(request: fastapi.Request, name: str) -> dict[str, Any]:
    """The model's tensors as TF Serving's ``serving_default`` signature."""
    return _metadata(resolve_model(request, name, None))


@router.get(
    "/v1/models/{name}/versions/{version}/metadata",
    summary="Signature of one model version (TF Serving REST)",
)
@protocol_route()
async def metadata_version(request: fastapi.Request, name: str, version: str) -> dict[str, Any]:
    """The model version's tensors as TF Serving's ``serving_default`` signature."""
    return _metadata(resolve_model(request, name, version))


def _metadata(runtime: Runtime) -> dict[str, Any]:
    signature = {
        "inputs": _tensor_infos(runtime.tensor_inputs),
        "outputs": _tensor_infos(runtime.tensor_outputs),
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": runtime.name, "signature_name": "", "version": str(runtime.version)},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
    }


def _tensor_infos(specs: list[tensors.TensorSpec]) -> dict[str, Any]:
    return {
        spec.name: {
            "dtype": TF_DATATYPES[np.dtype(spec.dtype)],
            "tensor_shape": {
                "dim": [{"size": str(size)} for size in spec.batched_shape()],
                "unknown_rank": False,
            },
            "name": spec.name,
        }
        for spec in specs
    }
