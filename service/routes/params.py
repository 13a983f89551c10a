"""What every task route needs: the repository, and which runtime a request is for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import fastapi
import numpy as np

from service.errors import BadRequest, ClientDisconnected, PayloadTooLarge
from service.repository import ModelRepository
from service.runtimes import Runtime
from service.settings import Settings

T = TypeVar("T")

ModelName = Annotated[
    str | None, fastapi.Query(alias="model", description="Model name (default: the task's).")
]
Version = Annotated[str | None, fastapi.Query(description="Version (default: the newest).")]


def get_repository(request: fastapi.Request) -> ModelRepository:
    return request.app.state.repository


def get_app_settings(request: fastapi.Request) -> Settings:
    return request.app.state.settings


def parse_version(text: str | None) -> int | None:
    """A version from a path or query string: a positive integer, or None."""
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) < 1:
        raise BadRequest(f"version must be a positive integer, got {text[:40]!r}")
    return int(text)


def resolve_runtime(
    request: fastapi.Request, task: str, name: str | None, version: str | None
) -> Runtime:
    """The runtime for a task request; records model and version for the metrics."""
    runtime = get_repository(request).get_for_task(task, name or None, parse_version(version))
    return _recorded(request, runtime)


def resolve_model(request: fastapi.Request, name: str, version: str | None) -> Runtime:
    """The runtime of a model (any task) named in a protocol's path; recorded likewise."""
    return _recorded(request, get_repository(request).get(name, parse_version(version)))


def _recorded(request: fastapi.Request, runtime: Runtime) -> Runtime:
    request.state.model = runtime.name
    request.state.version = runtime.version
    return runtime


def limit_encoded_images(request: fastapi.Request, inputs: dict[str, np.ndarray]) -> None:
    """Encoded images sent as tensors (v2 BYTES, TF Serving b64): no more per request than
    a task route takes (413)."""
    limit = get_app_settings(request).max_images_per_request
    for array in inputs.values():
        if array.dtype == object and len(array) > limit:
            raise PayloadTooLarge(f"{len(array)} images sent; at most {limit} per request")


def protocol_route(metrics_task: str = "") -> Callable[[Callable], Callable]:
    """Mark a standard protocol's handler: its errors travel as ``{"error": message}``
    (the app's error handlers read the mark) and ``metrics_task`` labels its metrics."""

    def mark(endpoint: Callable) -> Callable:
        endpoint.protocol_errors = True
        endpoint.metrics_task = metrics_task
        return endpoint

    return mark


def respond(request: fastapi.Request, result: Any) -> Any:
    """A runtime's result as it travels: its PNG form where the client prefers image/png
    (and the result has one), else JSON. Every task route answers through here."""
    if hasattr(result, "as_png") and prefers_png(request.headers.get("accept", "")):
        body = result.as_png()
        return fastapi.Response(body.png, media_type="image/png", headers=body.headers)
    return result


def prefers_png(accept: str) -> bool:
    """Whether an Accept header ranks image/png above JSON: by q-value (RFC 9110, the most
    specific range deciding), and on a tie by which is listed first; JSON by default."""
    ranges: dict[str, tuple[float, int]] = {}  # media range -> (q, position)
    for position, part in enumerate(accept.lower().split(",")):
        media_range, *options = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for option in options:
            key, _, value = option.partition("=")
            if key.strip() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        ranges.setdefault(media_range, (quality, position))
    png = _match(ranges, ("image/png", "image/*", "*/*"))
    json = _match(ranges, ("application/json", "application/*", "*/*"))
    return png[0] > 0 and (png[0] > json[0] or (png[0] == json[0] and png[1] < json[1]))


def _match(ranges: dict[str, tuple[float, int]], candidates: tuple[str, ...]) -> tuple[float, int]:
    """The (q, position) of the most specific range that matches, else (0, never listed)."""
    return next((ranges[c] for c in candidates if c in ranges), (0.0, len(ranges)))


async def unless_disconnected(request: fastapi.Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client hangs up first.

    Starlette does not cancel a handler when its client goes away; cancelling the
    work here lets the Batcher drop the request before it reaches the model.
    Call it once the body has been read: from then on ``receive()`` only reports
    the disconnect.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientDisconnected("the client closed the connection") from None
        raise
    finally:
        watcher.cancel()
