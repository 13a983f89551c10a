"""POST /v1/generate and its per-model forms."""

from __future__ import annotations

from typing import Annotated

import fastapi
import pydantic

from service.errors import PayloadTooLarge
from service.routes.params import (
    ModelName,
    Version,
    get_app_settings,
    resolve_runtime,
    unless_disconnected,
    wants_png,
)
from service.runtimes.generation import (
    MAX_COUNT,
    MAX_SEED,
    MAX_TRUNCATION,
    MIN_TRUNCATION,
    GenerateRequest,
    GenerateResponse,
)

router = fastapi.APIRouter(tags=["generation"])

SEED_HEADER = "X-Kerve-Seed"  # a PNG grid has no JSON to report its seed in

# Strict, so that 7.0 or "7" is not taken for the index 7; a bool passes here and
# is refused with the model's labels (400), like any label the model does not have.
Label = Annotated[
    pydantic.StrictStr | pydantic.StrictInt | pydantic.StrictBool,
    pydantic.WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}),
]


class GenerateBody(pydantic.BaseModel):
    """What to generate: images of one class."""

    model_config = pydantic.ConfigDict(extra="forbid")

    label: Label = pydantic.Field(
        description="The class: a name from the model's labels (GET /v1/models/{name}; "
        "case-insensitive if unambiguous) or its index."
    )
    count: int = pydantic.Field(
        default=1,
        ge=1,
        le=MAX_COUNT,
        strict=True,
        description=f"Images to make, 1 to {MAX_COUNT} (and at most the server's "
        "max_images_per_request).",
    )
    seed: int | None = pydantic.Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        strict=True,
        description="Image i is made from seed + i alone, so equal seeds give equal images. "
        "Omitted: drawn at random and reported.",
    )
    truncation: float | None = pydantic.Field(
        default=None,
        ge=MIN_TRUNCATION,
        le=MAX_TRUNCATION,
        description="Truncation trick: latent values beyond +-truncation are drawn again. "
        "Smaller is more typical and less varied.",
    )


EXAMPLES = {
    "four sneakers": {
        "summary": "Four images of one class, reproducibly",
        "value": {"label": "sneaker", "count": 4, "seed": 42},
    },
    "by index": {
        "summary": "Class by index, truncated latents, random seed",
        "value": {"label": 7, "count": 9, "truncation": 0.7},
    },
}
Body = Annotated[GenerateBody, fastapi.Body(openapi_examples=EXAMPLES)]
PNG_RESPONSE = {
    200: {
        "content": {"image/png": {}},
        "description": "JSON by default; with `Accept: image/png`, one PNG grid of the images "
        f"in rows of ceil(sqrt(count)), 2 black pixels apart, its seed in `{SEED_HEADER}`.",
    }
}


async def _generate(
    request: fastapi.Request, body: GenerateBody, name: str | None, version: str | None
) -> GenerateResponse | fastapi.Response:
    max_images = get_app_settings(request).max_images_per_request
    if body.count > max_images:
        raise PayloadTooLarge(f"{body.count} images asked; at most {max_images} per request")
    runtime = resolve_runtime(request, "generation", name, version)
    png_only = wants_png(request)
    result = await unless_disconnected(
        request, runtime.infer(GenerateRequest(**body.model_dump(), png_only=png_only))
    )
    if png_only:
        return fastapi.Response(
            result.png, media_type="image/png", headers={SEED_HEADER: str(result.seed)}
        )
    return result


@router.post("/v1/generate", responses=PNG_RESPONSE)
async def generate_images(
    request: fastapi.Request, body: Body, model: ModelName = None, version: Version = None
) -> GenerateResponse:
    """Generate images of one class with the default (or named) generation model."""
    return await _generate(request, body, model, version)


@router.post("/v1/models/{name}/generate", responses=PNG_RESPONSE)
async def generate_with_model(request: fastapi.Request, name: str, body: Body) -> GenerateResponse:
    """Generate images with the newest version of one model."""
    return await _generate(request, body, name, None)


@router.post("/v1/models/{name}/versions/{version}/generate", responses=PNG_RESPONSE)
async def generate_with_version(
    request: fastapi.Request, name: str, version: str, body: Body
) -> GenerateResponse:
    """Generate images with one exact model version."""
    return await _generate(request, body, name, version)
