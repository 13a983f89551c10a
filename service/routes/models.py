"""Model metadata: GET /v1/models[/{name}[/versions/{version}]].

Kerve's own description of each version, the endpoints that serve it, and TF Serving's
``model_version_status`` so that TF Serving health checks work unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import fastapi
import pydantic
from starlette.exceptions import HTTPException
from starlette.routing import NoMatchFound

from service.errors import VersionNotFound
from service.repository import ModelVersion, VersionState
from service.routes.params import get_repository, parse_version

router = fastapi.APIRouter(tags=["models"])

# The routes that serve one version, by the name each is registered under.
ENDPOINT_ROUTES = {"v2": "v2_infer", "tfserving": "tfserving_predict"}  # + _model, _version
# Kerve's version states as TF Serving's ModelVersionStatus states.
TF_SERVING_STATES = {
    VersionState.LOADING: "LOADING",
    VersionState.AVAILABLE: "AVAILABLE",
    VersionState.UNLOADING: "UNLOADING",
    VersionState.FAILED: "END",
}


class TfServingStatus(pydantic.BaseModel):
    error_code: str = "OK"
    error_message: str = ""


class TfServingVersionStatus(pydantic.BaseModel):
    """One entry of TF Serving's GetModelStatus answer."""

    version: str
    state: str = pydantic.Field(description="START, LOADING, AVAILABLE, UNLOADING or END")
    status: TfServingStatus


class EngineInfo(pydantic.BaseModel):
    """What runs this version's model, chosen at load (SERVE_ENGINE, SERVE_PRECISION)."""

    engine: str = pydantic.Field(description="keras, openvino or onnxruntime")
    precision: str = pydantic.Field(description="fp32 or bf16, as the engine computes")
    backend: str = pydantic.Field(description="The Keras backend the service runs on.")
    reason: str = pydantic.Field(description="Why this engine: its speed and agreement, or why "
                                 "each compiled engine was not kept.")  # fmt: skip
    trials: list[dict[str, Any]] | None = pydantic.Field(
        default=None,
        description="Every engine tried at load: outcome, agreement with Keras, milliseconds "
        "per padded batch size, preparation seconds and whether the export was cached "
        "(in a version's own description).",
    )


class VersionInfo(pydantic.BaseModel):
    version: int
    state: str = pydantic.Field(description="LOADING, AVAILABLE, FAILED or UNLOADING")
    error: str | None = None
    loaded_at: datetime | None = None
    task: str | None = None
    description: str | None = pydantic.Field(
        default=None, description="What the model knows, in one line (from its manifest)."
    )
    input: dict[str, Any] | None = None
    batching: dict[str, Any] | None = None
    labels: list[str] | None = pydantic.Field(
        default=None, description="In the listing too for a generator: what it can be asked for."
    )
    generation: dict[str, Any] | None = pydantic.Field(
        default=None, description="A generator's latent space (latent_dim)."
    )
    upscaling: dict[str, Any] | None = pydantic.Field(
        default=None, description="An upscaler's scale and tile margin, known before asking."
    )
    endpoints: dict[str, str] | None = pydantic.Field(
        default=None,
        description="The paths that serve this version: its task route (`task`), the Open "
        "Inference Protocol v2 (`v2`) and TF Serving's REST API (`tfserving`).",
    )
    engine: EngineInfo | None = None
    metrics: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None


class VersionDetail(VersionInfo):
    model_version_status: list[TfServingVersionStatus] = pydantic.Field(
        description="TF Serving's status of this version (GET /v1/models/{name}/versions/{v})."
    )


class ModelInfo(pydantic.BaseModel):
    name: str
    serving_version: int | None = pydantic.Field(description="What requests without a version get.")
    versions: list[VersionInfo]
    pending: dict[str, Any] | None = pydantic.Field(
        default=None,
        description="A model still to come (models/<name>/PENDING): why, and in about how "
        "many seconds (`reason`, `expected_s`).",
    )
    endpoints: dict[str, str] | None = pydantic.Field(
        default=None,
        description="The paths that serve the newest available version (as `versions[].endpoints`"
        " does for each version).",
    )
    model_version_status: list[TfServingVersionStatus] | None = pydantic.Field(
        default=None,
        description="TF Serving's GetModelStatus list, newest version first: its health checks "
        "read this (GET /v1/models/{name}).",
    )


class ModelList(pydantic.BaseModel):
    models: list[ModelInfo]


def _version_info(request: fastapi.Request, entry: ModelVersion, detailed: bool) -> VersionInfo:
    info = VersionInfo(version=entry.version, state=entry.state.value, error=entry.error)
    if entry.loaded_at is not None:
        info.loaded_at = datetime.fromtimestamp(entry.loaded_at, UTC)
    if entry.runtime is not None:
        runtime, manifest = entry.runtime, entry.runtime.manifest
        info.task = runtime.task
        info.description = manifest.description or None
        info.endpoints = _endpoints(request, entry, "version")
        if hasattr(manifest, "input"):
            info.input = manifest.input.model_dump()
        info.batching = {**vars(runtime.batching), "batch_sizes": runtime.batching.batch_sizes}
        if runtime.engine_report is not None:
            report = runtime.engine_report.as_dict()
            info.engine = EngineInfo(**{**report, "trials": report["trials"] if detailed else None})
        if hasattr(manifest, "generation"):
            info.generation = manifest.generation.model_dump()
        if hasattr(manifest, "upscaling"):
            info.upscaling = manifest.upscaling.model_dump()
        if hasattr(manifest, "labels") and (detailed or runtime.task == "generation"):
            info.labels = manifest.labels
        if detailed:
            info.metrics = manifest.metrics
            info.provenance = manifest.provenance
    return info


def _endpoints(request: fastapi.Request, entry: ModelVersion, form: str) -> dict[str, str]:
    """Paths of the routes that serve this version (``form`` "version") or the model's
    newest (``form`` "model"), for the protocols that are registered."""
    routes = {key: f"{route}_{form}" for key, route in ENDPOINT_ROUTES.items()}
    if entry.runtime.verb is not None:
        routes["task"] = f"{entry.runtime.verb}_{form}"
    where = {"name": entry.name}
    if form == "version":
        where["version"] = str(entry.version)
    paths = {}
    for key, route_name in routes.items():
        try:
            paths[key] = request.app.url_path_for(route_name, **where)
        except NoMatchFound:
            continue
    return paths


def _tf_serving_status(entry: ModelVersion) -> TfServingVersionStatus:
    failed = entry.state is VersionState.FAILED
    return TfServingVersionStatus(
        version=str(entry.version),
        state=TF_SERVING_STATES[entry.state],
        status=TfServingStatus(
            error_code="UNKNOWN" if failed else "OK", error_message=entry.error or ""
        ),
    )


def _model_info(request: fastapi.Request, name: str, detailed: bool) -> ModelInfo:
    repository = get_repository(request)
    entries = repository.versions(name)
    available = [e for e in entries if e.state is VersionState.AVAILABLE]
    newest = max(available, key=lambda e: e.version, default=None)
    return ModelInfo(
        name=name,
        serving_version=newest.version if newest else None,
        versions=[_version_info(request, e, detailed) for e in entries],
        pending=repository.pending(name),
        endpoints=_endpoints(request, newest, "model") if newest else None,
        model_version_status=[_tf_serving_status(e) for e in entries] if detailed else None,
    )


@router.get("/v1/models", response_model_exclude_none=True)
async def list_models(request: fastapi.Request) -> ModelList:
    """List every model in the repository with the state of each of its versions."""
    names = get_repository(request).model_names()
    return ModelList(models=[_model_info(request, name, detailed=False) for name in names])


def _not_a_predict_url(request: fastapi.Request) -> None:
    """TF Serving's predict URLs (/v1/models/m:predict, .../versions/1:predict) match the
    paths of the routes below too: a GET there is a 405 (Allow: POST), not a look-up of a
    model "m:predict" or a version "1:predict"."""
    if request.scope["path"].endswith(":predict"):
        raise HTTPException(405)


@router.get(
    "/v1/models/{name}",
    response_model_exclude_none=True,
    dependencies=[fastapi.Depends(_not_a_predict_url)],
)
async def get_model(request: fastapi.Request, name: str) -> ModelInfo:
    """Describe one model: versions, input, labels, batching, endpoints, test metrics,
    provenance, and TF Serving's model_version_status."""
    return _model_info(request, name, detailed=True)


@router.get(
    "/v1/models/{name}/versions/{version}",
    response_model_exclude_none=True,
    dependencies=[fastapi.Depends(_not_a_predict_url)],
)
async def get_model_version(request: fastapi.Request, name: str, version: str) -> VersionDetail:
    """Describe one model version."""
    number = parse_version(version)
    for entry in get_repository(request).versions(name):
        if entry.version == number:
            info = _version_info(request, entry, detailed=True)
            return VersionDetail(
                **info.model_dump(exclude_none=True),
                model_version_status=[_tf_serving_status(entry)],
            )
    raise VersionNotFound(f"model {name!r} has no version {number}")
