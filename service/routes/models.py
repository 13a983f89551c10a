"""Model metadata: GET /v1/models[/{name}[/versions/{version}]]."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import fastapi
import pydantic

from service.errors import VersionNotFound
from service.repository import ModelVersion, VersionState
from service.routes.params import get_repository, parse_version

router = fastapi.APIRouter(tags=["models"])


class VersionInfo(pydantic.BaseModel):
    version: int
    state: str = pydantic.Field(description="LOADING, AVAILABLE, FAILED or UNLOADING")
    error: str | None = None
    loaded_at: datetime | None = None
    task: str | None = None
    input: dict[str, Any] | None = None
    batching: dict[str, Any] | None = None
    labels: list[str] | None = pydantic.Field(
        default=None, description="In the listing too for a generator: what it can be asked for."
    )
    generation: dict[str, Any] | None = pydantic.Field(
        default=None, description="A generator's latent space (latent_dim)."
    )
    metrics: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None


class ModelInfo(pydantic.BaseModel):
    name: str
    serving_version: int | None = pydantic.Field(description="What requests without a version get.")
    versions: list[VersionInfo]


class ModelList(pydantic.BaseModel):
    models: list[ModelInfo]


def _version_info(entry: ModelVersion, detailed: bool) -> VersionInfo:
    info = VersionInfo(version=entry.version, state=entry.state.value, error=entry.error)
    if entry.loaded_at is not None:
        info.loaded_at = datetime.fromtimestamp(entry.loaded_at, UTC)
    if entry.runtime is not None:
        runtime = entry.runtime
        info.task = runtime.task
        info.input = runtime.manifest.input.model_dump()
        info.batching = {**vars(runtime.batching), "batch_sizes": runtime.batching.batch_sizes}
        if runtime.manifest.generation is not None:
            info.generation = runtime.manifest.generation.model_dump()
        if detailed or runtime.task == "generation":
            info.labels = runtime.manifest.labels
        if detailed:
            info.metrics = runtime.manifest.metrics
            info.provenance = runtime.manifest.provenance
    return info


def _model_info(request: fastapi.Request, name: str, detailed: bool) -> ModelInfo:
    entries = get_repository(request).versions(name)
    available = [e.version for e in entries if e.state is VersionState.AVAILABLE]
    return ModelInfo(
        name=name,
        serving_version=max(available, default=None),
        versions=[_version_info(e, detailed) for e in entries],
    )


@router.get("/v1/models", response_model_exclude_none=True)
async def list_models(request: fastapi.Request) -> ModelList:
    """List every model in the repository with the state of each of its versions."""
    names = get_repository(request).model_names()
    return ModelList(models=[_model_info(request, name, detailed=False) for name in names])


@router.get("/v1/models/{name}", response_model_exclude_none=True)
async def get_model(request: fastapi.Request, name: str) -> ModelInfo:
    """Describe one model: versions, input, labels, batching, test metrics, provenance."""
    return _model_info(request, name, detailed=True)


@router.get("/v1/models/{name}/versions/{version}", response_model_exclude_none=True)
async def get_model_version(request: fastapi.Request, name: str, version: str) -> VersionInfo:
    """Describe one model version."""
    number = parse_version(version)
    for entry in get_repository(request).versions(name):
        if entry.version == number:
            return _version_info(entry, detailed=True)
    raise VersionNotFound(f"model {name!r} has no version {number}")
