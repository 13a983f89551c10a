"""POST /v1/denoise and its per-model forms."""

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
from service.runtimes.denoising import DenoiseRequest, DenoiseResponse

router = fastapi.APIRouter(tags=["denoising"])

Sigma = Annotated[
    float | None,
    fastapi.Query(
        description="Noise standard deviation in pixel levels, 0 to 255, for a model that "
        "takes one (default: estimated from the image). A blind model refuses it."
    ),
]
PNG_RESPONSE = {
    200: {
        "content": {"image/png": {}},
        "description": "JSON by default; with `Accept: image/png`, the denoised PNG alone.",
    }
}


async def _denoise(
    request: fastapi.Request, name: str | None, version: str | None, sigma: float | None
) -> DenoiseResponse | fastapi.Response:
    image = await read_one_image(request, "denoising")
    runtime = resolve_runtime(request, "denoising", name, version)
    png_only = wants_png(request)
    result = await unless_disconnected(
        request, runtime.infer(DenoiseRequest(image=image, sigma=sigma, png_only=png_only))
    )
    return png_or_json(result, png_only)


@router.post("/v1/denoise", openapi_extra=IMAGE_REQUEST_BODY, responses=PNG_RESPONSE)
async def denoise_image(
    request: fastapi.Request,
    sigma: Sigma = None,
    model: ModelName = None,
    version: Version = None,
) -> DenoiseResponse:
    """Denoise an image of any size: the clean image, as a PNG of the same size."""
    return await _denoise(request, model, version, sigma)


@router.post("/v1/models/{name}/denoise", openapi_extra=IMAGE_REQUEST_BODY, responses=PNG_RESPONSE)
async def denoise_with_model(
    request: fastapi.Request, name: str, sigma: Sigma = None
) -> DenoiseResponse:
    """Denoise an image with the newest version of one model."""
    return await _denoise(request, name, None, sigma)


@router.post(
    "/v1/models/{name}/versions/{version}/denoise",
    openapi_extra=IMAGE_REQUEST_BODY,
    responses=PNG_RESPONSE,
)
async def denoise_with_version(
    request: fastapi.Request, name: str, version: str, sigma: Sigma = None
) -> DenoiseResponse:
    """Denoise an image with one exact model version."""
    return await _denoise(request, name, version, sigma)
