"""The Open Inference Protocol v2 over REST (KServe, Triton): health, metadata, inference.

Every model is reachable as named tensors in and out (``Runtime.infer_tensors``), so
v2 requests share batches with the task routes of the same model. JSON tensors and
the binary tensor data extension are both spoken (``service.v2_codec``); errors are
the protocol's ``{"error": message}``.
"""

from __future__ import annotations

from typing import Any

import fastapi
import numpy as np
from starlette.concurrency import run_in_threadpool

from service import v2_codec
from service.errors import BadRequest, UnsupportedMediaType
from service.repository import VersionState
from service.routes.params import (
    get_repository,
    limit_encoded_images,
    protocol_route,
    resolve_model,
    unless_disconnected,
)
from service.runtimes import Runtime
from service.tensors import BYTES, TensorSpec

router = fastapi.APIRouter(tags=["v2 protocol"])
MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
EXTENSIONS = ["binary_tensor_data"]
INFER_BODY = {
    "parameters": [
        {
            "name": v2_codec.HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "Binary tensor data extension: the bytes of JSON the body opens with.",
            "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": v2_codec.InferenceRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "Binary tensor data extension: the JSON request, then the "
                    "bytes of each input with parameters.binary_data_size, in order.",
                }
            },
        },
    },
}


@router.get("/v2")
@protocol_route()
async def server_metadata(request: fastapi.Request) -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions it speaks."""
    return {"name": "kerve", "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/v2/health/live")
@protocol_route()
async def server_live() -> dict[str, bool]:
    """Liveness: 200 while the process answers."""
    return {"live": True}


@router.get("/v2/health/ready", responses={503: {"description": "Not ready (see /readyz)."}})
@protocol_route()
async def server_ready(request: fastapi.Request) -> fastapi.responses.JSONResponse:
    """Readiness: 200 once the first load is done and every model serves a version."""
    ready = get_repository(request).is_ready()
    return fastapi.responses.JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get(MODEL)
@router.get(VERSION)
@protocol_route()
async def model_metadata(
    request: fastapi.Request, name: str, version: str | None = None
) -> dict[str, Any]:
    """A model's available versions and its input and output tensors (-1: the batch axis)."""
    runtime = resolve_model(request, name, version)
    entries = reversed(get_repository(request).versions(name))
    inputs = [_tensor_metadata(spec) for spec in runtime.tensor_inputs]
    if runtime.takes_encoded_images:
        note = "or BYTES of shape [-1]: encoded image files (JPEG, PNG...), one per sample"
        inputs[0]["parameters"] = {"encoded_images": note}
    return {
        "name": runtime.name,
        "versions": [str(e.version) for e in entries if e.state is VersionState.AVAILABLE],
        "platform": "keras",
        "inputs": inputs,
        "outputs": [_tensor_metadata(spec) for spec in runtime.tensor_outputs],
    }


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": spec.batched_shape()}


@router.get(f"{MODEL}/ready")
@router.get(f"{VERSION}/ready")
@protocol_route()
async def model_ready(
    request: fastapi.Request, name: str, version: str | None = None
) -> dict[str, Any]:
    """200 when the model (version) serves; 404 if unknown, 503 while loading."""
    runtime = resolve_model(request, name, version)
    return {"name": runtime.name, "ready": True}


@router.post(
    f"{MODEL}/infer",
    name="v2_infer_model",
    summary="Infer with the newest version",
    openapi_extra=INFER_BODY,
)
@router.post(
    f"{VERSION}/infer",
    name="v2_infer_version",
    summary="Infer with one model version",
    openapi_extra=INFER_BODY,
)
@protocol_route("infer")
async def infer(
    request: fastapi.Request, name: str, version: str | None = None
) -> fastapi.Response:
    """Inference: JSON tensors, or the binary tensor data extension."""
    runtime = resolve_model(request, name, version)
    if request.headers.get("content-encoding", "identity") != "identity":
        raise UnsupportedMediaType("compressed request bodies are not supported")
    body = await request.body()
    header_length = request.headers.get(v2_codec.HEADER_LENGTH)
    inference, inputs = await run_in_threadpool(_read, runtime, body, header_length)
    limit_encoded_images(request, inputs)
    selected = _selected_outputs(runtime, inference)
    outputs = await unless_disconnected(request, runtime.infer_tensors(inputs))
    header = {"model_name": runtime.name, "model_version": str(runtime.version)}
    if inference.id is not None:
        header["id"] = inference.id
    chosen = [(name, outputs[name], binary) for name, binary in selected]
    return await run_in_threadpool(v2_codec.write_response, header, chosen)


def _read(
    runtime: Runtime, body: bytes, header_length: str | None
) -> tuple[v2_codec.InferenceRequest, dict[str, np.ndarray]]:
    """The request and its inputs as arrays, each declared as the model declares it."""
    inference, binary = v2_codec.read_header(body, header_length)
    specs = {spec.name: spec for spec in runtime.tensor_inputs}
    for tensor in inference.inputs:
        spec = specs.get(tensor.name)
        if spec is None or tensor.datatype == spec.datatype:
            continue  # an unknown name is reported with the missing ones, by infer_tensors
        if not (tensor.datatype == BYTES and runtime.takes_encoded_images):
            raise BadRequest(f"input {tensor.name!r} is {spec.datatype}, not {tensor.datatype}")
    return inference, v2_codec.read_inputs(inference, binary)


def _selected_outputs(
    runtime: Runtime, inference: v2_codec.InferenceRequest
) -> list[tuple[str, bool]]:
    """(name, binary?) of each output to return: those asked for, else all of them."""
    default = inference.parameters.binary_data_output
    if not inference.outputs:
        return [(spec.name, default) for spec in runtime.tensor_outputs]
    known = [spec.name for spec in runtime.tensor_outputs]
    for output in inference.outputs:
        if output.name not in known:
            raise BadRequest(
                f"model {runtime.name!r} has no output {output.name!r}; it has {known}"
            )
    return [
        (o.name, default if o.parameters.binary_data is None else o.parameters.binary_data)
        for o in inference.outputs
    ]
