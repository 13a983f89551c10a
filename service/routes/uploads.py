"""Reading images out of an HTTP request: raw body, multipart form, or JSON base64."""

from __future__ import annotations

import base64
import binascii

import fastapi
import pydantic
from fastapi.exceptions import RequestValidationError
from starlette.requests import ClientDisconnect

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.routes.params import get_app_settings

RAW_IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "application/octet-stream"}
)
FORM_FIELD = "file"


class Base64Image(pydantic.BaseModel):
    b64: str = pydantic.Field(
        description="An image file (JPEG, PNG, WebP, BMP, GIF), base64-encoded.",
        json_schema_extra={"minLength": 1, "contentEncoding": "base64"},
    )


class ImagesJson(pydantic.BaseModel):
    """JSON input: one ``image`` or a list of ``images``, each ``{"b64": "..."}``."""

    model_config = pydantic.ConfigDict(
        extra="forbid",
        # At least one image: "image", or "images" with one or more (else 400).
        json_schema_extra={
            "anyOf": [
                {"required": ["image"], "properties": {"image": {"type": "object"}}},
                {
                    "required": ["images"],
                    "properties": {"images": {"type": "array", "minItems": 1}},
                },
            ]
        },
    )

    image: Base64Image | None = None
    images: list[Base64Image] | None = None


# What /docs shows for the request body of an image endpoint.
IMAGE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        FORM_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        }
                    },
                    "required": [FORM_FIELD],
                }
            },
            "application/json": {"schema": ImagesJson.model_json_schema()},
        },
    }
}


def media_type(request: fastapi.Request) -> str:
    """The body's media type, lower case, without parameters ("" if none is given)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_images(request: fastapi.Request, max_images: int) -> list[bytes]:
    """The image files a request carries, as bytes, in order (at least one)."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        images = await _read_form(request, max_images)
    elif kind == "application/json":
        images = _read_json(await request.body())
    elif kind in RAW_IMAGE_TYPES or kind == "":
        images = [await request.body()]
    else:
        hint = " (curl: add -H 'Content-Type: image/jpeg')" if "form-urlencoded" in kind else ""
        raise UnsupportedMediaType(
            f"unsupported content type {kind!r}{hint}; send an image body "
            "(image/jpeg, image/png, image/webp, image/bmp, image/gif), "
            "multipart/form-data with 'file' fields, or JSON with base64 images"
        )
    if len(images) > max_images:
        raise PayloadTooLarge(f"{len(images)} images sent; at most {max_images} per request")
    if not images or not any(images):
        raise BadRequest("the request carries no image")
    return images


async def read_one_image(request: fastapi.Request, task: str) -> bytes:
    """The request's single image; 400 if it holds several (``task`` names the route's work)."""
    images = await read_images(request, get_app_settings(request).max_images_per_request)
    if len(images) > 1:
        raise BadRequest(f"{task} takes one image per request, got {len(images)}")
    return images[0]


async def _read_form(request: fastapi.Request, max_images: int) -> list[bytes]:
    try:
        form = await request.form(max_files=max_images + 1, max_fields=100)
    except (PayloadTooLarge, ClientDisconnect):
        raise
    except Exception as error:  # noqa: BLE001 - the multipart parser raises several kinds
        # Starlette wraps the parser's errors in a 400 HTTPException; the message is kept.
        message = str(getattr(error, "detail", None) or error)
        if message.startswith("Too many files"):  # the parser stops at max_files
            raise PayloadTooLarge(
                f"more than {max_images} images sent; at most {max_images} per request"
            ) from error
        raise BadRequest(f"malformed multipart body: {message}") from error
    try:
        uploads = form.getlist(FORM_FIELD)
        if not uploads:
            raise BadRequest(f"multipart body has no '{FORM_FIELD}' field")
        if any(isinstance(upload, str) for upload in uploads):
            raise BadRequest(f"'{FORM_FIELD}' fields must be files, not text")
        return [await upload.read() for upload in uploads]
    finally:
        await form.close()


def _read_json(body: bytes) -> list[bytes]:
    try:
        document = ImagesJson.model_validate_json(body)
    except pydantic.ValidationError as error:
        # Malformed JSON is a 400; well-formed JSON of the wrong shape is a 422.
        if any(item["type"] == "json_invalid" for item in error.errors()):
            raise BadRequest("the body is not valid JSON") from error
        raise RequestValidationError(error.errors(include_url=False)) from error
    entries = ([document.image] if document.image else []) + (document.images or [])
    if not entries:
        raise BadRequest('JSON body needs "image": {"b64": ...} or "images": [...]')
    try:
        return [base64.b64decode(entry.b64, validate=True) for entry in entries]
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"invalid base64 image data: {error}") from error
