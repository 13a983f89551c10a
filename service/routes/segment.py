"""POST /v1/segment and its per-model forms."""

from __future__ import annotations

from typing import Annotated

import fastapi

from service.routes.params import (
    ModelName,
    Version,
    png_or_json,
    resolve_runtime,
    unless_disconnected,
    wants_png,
)
from service.routes.uploads import IMAGE_REQUEST_BODY, read_one_image
from service.runtimes.segmentation import SegmentRequest, SegmentResponse

router = fastapi.APIRouter(tags=["segmentation"])

Overlay = Annotated[
    bool, fastapi.Query(description="Also return the mask blended over the image (PNG).")
]
PNG_RESPONSE = {
    200: {
        "content": {"image/png": {}},
        "description": "JSON by default; with `Accept: image/png`, the mask PNG alone.",
    }
}


async def _segment(
    request: fastapi.Request, name: str | None, version: str | None, overlay: bool
) -> SegmentResponse | fastapi.Response:
    image = await read_one_image(request, "segmentation")
    runtime = resolve_runtime(request, "segmentation", name, version)
    mask_only = wants_png(request)
    result = await unless_disconnected(
        request, runtime.infer(SegmentRequest(image=image, overlay=overlay, mask_only=mask_only))
    )
    return png_or_json(result, mask_only)


@router.post("/v1/segment", openapi_extra=IMAGE_REQUEST_BODY, responses=PNG_RESPONSE)
async def segment_image(
    request: fastapi.Request,
    overlay: Overlay = False,
    model: ModelName = None,
    version: Version = None,
) -> SegmentResponse:
    """Segment an image: a class per pixel, as a mask PNG of the image's size."""
    return await _segment(request, model, version, overlay)


@router.post("/v1/models/{name}/segment", openapi_extra=IMAGE_REQUEST_BODY, responses=PNG_RESPONSE)
async def segment_with_model(
    request: fastapi.Request, name: str, overlay: Overlay = False
) -> SegmentResponse:
    """Segment an image with the newest version of one model."""
    return await _segment(request, name, None, overlay)


@router.post(
    "/v1/models/{name}/versions/{version}/segment",
    openapi_extra=IMAGE_REQUEST_BODY,
    responses=PNG_RESPONSE,
)
async def segment_with_version(
    request: fastapi.Request, name: str, version: str, overlay: Overlay = False
) -> SegmentResponse:
    """Segment an image with one exact model version."""
    return await _segment(request, name, version, overlay)
