"""What every task route needs: the repository, and which runtime a request is for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

import fastapi

from service.errors import BadRequest, ClientDisconnected
from service.repository import ModelRepository
from service.runtimes import Runtime
from service.settings import Settings

T = TypeVar("T")

ModelName = Annotated[str | None, fastapi.Query(description="Model name (default: the task's).")]
Version = Annotated[str | None, fastapi.Query(description="Version (default: the newest).")]


def get_repository(request: fastapi.Request) -> ModelRepository:
    return request.app.state.repository


def get_app_settings(request: fastapi.Request) -> Settings:
    return request.app.state.settings


def parse_version(text: str | None) -> int | None:
    """A version from a path or query string: a positive integer, or None."""
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise BadRequest(f"version must be a positive integer, got {text[:40]!r}")
    return int(text)


def resolve_runtime(
    request: fastapi.Request, task: str, name: str | None, version: str | None
) -> Runtime:
    """The runtime for a task request; records model and version for the metrics."""
    runtime = get_repository(request).get_for_task(task, name or None, parse_version(version))
    request.state.model = runtime.name
    request.state.version = runtime.version
    return runtime


def wants_png(request: fastapi.Request) -> bool:
    """``Accept: image/png`` (and not JSON first) asks for the PNG alone instead of JSON."""
    accepted = [part.split(";")[0].strip() for part in request.headers.get("accept", "").split(",")]
    return "image/png" in accepted and accepted.index("image/png") < _position(
        accepted, "application/json"
    )


def png_or_json(result, png_only: bool):
    """A runtime's PNG bytes as an image/png response, or its JSON model unchanged."""
    return fastapi.Response(result, media_type="image/png") if png_only else result


def _position(accepted: list[str], media_type: str) -> int:
    return accepted.index(media_type) if media_type in accepted else len(accepted)


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
