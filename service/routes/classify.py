"""POST /v1/classify and its per-model forms."""

from __future__ import annotations

from typing import Annotated

import fastapi

from service.routes.params import (
    ModelName,
    Version,
    get_app_settings,
    resolve_runtime,
    unless_disconnected,
)
from service.routes.uploads import IMAGE_REQUEST_BODY, read_images
from service.runtimes.classification import DEFAULT_TOP_K, ClassifyRequest, ClassifyResponse

router = fastapi.APIRouter(tags=["classification"])

TopK = Annotated[
    int | None,
    fastapi.Query(
        description=f"Labels per image, best first (default {DEFAULT_TOP_K}, "
        "at most the number of classes)."
    ),
]


async def _classify(
    request: fastapi.Request, name: str | None, version: str | None, top_k: int | None
) -> ClassifyResponse:
    settings = get_app_settings(request)
    images = await read_images(request, settings.max_images_per_request)
    runtime = resolve_runtime(request, "classification", name, version)
    return await unless_disconnected(
        request, runtime.infer(ClassifyRequest(images=images, top_k=top_k))
    )


@router.post("/v1/classify", openapi_extra=IMAGE_REQUEST_BODY)
async def classify_images(
    request: fastapi.Request,
    top_k: TopK = None,
    model: ModelName = None,
    version: Version = None,
) -> ClassifyResponse:
    """Classify one or more images with the default (or named) classification model."""
    return await _classify(request, model, version, top_k)


@router.post("/v1/models/{name}/classify", openapi_extra=IMAGE_REQUEST_BODY)
async def classify_with_model(
    request: fastapi.Request, name: str, top_k: TopK = None
) -> ClassifyResponse:
    """Classify images with the newest version of one model."""
    return await _classify(request, name, None, top_k)


@router.post("/v1/models/{name}/versions/{version}/classify", openapi_extra=IMAGE_REQUEST_BODY)
async def classify_with_version(
    request: fastapi.Request, name: str, version: str, top_k: TopK = None
) -> ClassifyResponse:
    """Classify images with one exact model version."""
    return await _classify(request, name, version, top_k)
