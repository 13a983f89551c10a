"""POST /v1/caption and its per-model forms."""

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
from service.runtimes.captioning import MAX_BEAM_SIZE, CaptionRequest, CaptionResponse

router = fastapi.APIRouter(tags=["captioning"])

BeamSize = Annotated[
    int,
    fastapi.Query(
        description=f"Beams per image, 1 to {MAX_BEAM_SIZE} (1: greedy decoding); "
        "with more, the other beams come back as alternatives."
    ),
]
MaxLength = Annotated[
    int | None,
    fastapi.Query(description="Most words per caption (default and limit: the model's)."),
]


async def _caption(
    request: fastapi.Request,
    name: str | None,
    version: str | None,
    beam_size: int,
    max_length: int | None,
) -> CaptionResponse:
    settings = get_app_settings(request)
    images = await read_images(request, settings.max_images_per_request)
    runtime = resolve_runtime(request, "captioning", name, version)
    caption_request = CaptionRequest(images=images, beam_size=beam_size, max_length=max_length)
    return await unless_disconnected(request, runtime.infer(caption_request))


@router.post("/v1/caption", openapi_extra=IMAGE_REQUEST_BODY)
async def caption_images(
    request: fastapi.Request,
    beam_size: BeamSize = 1,
    max_length: MaxLength = None,
    model: ModelName = None,
    version: Version = None,
) -> CaptionResponse:
    """Caption one or more images with the default (or named) captioning model."""
    return await _caption(request, model, version, beam_size, max_length)


@router.post("/v1/models/{name}/caption", openapi_extra=IMAGE_REQUEST_BODY)
async def caption_with_model(
    request: fastapi.Request, name: str, beam_size: BeamSize = 1, max_length: MaxLength = None
) -> CaptionResponse:
    """Caption images with the newest version of one model."""
    return await _caption(request, name, None, beam_size, max_length)


@router.post("/v1/models/{name}/versions/{version}/caption", openapi_extra=IMAGE_REQUEST_BODY)
async def caption_with_version(
    request: fastapi.Request,
    name: str,
    version: str,
    beam_size: BeamSize = 1,
    max_length: MaxLength = None,
) -> CaptionResponse:
    """Caption images with one exact model version."""
    return await _caption(request, name, version, beam_size, max_length)
