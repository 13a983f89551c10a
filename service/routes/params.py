"""What every task route needs: the repository, and which runtime a request is for."""

from __future__ import annotations

import fastapi

from service.errors import BadRequest
from service.repository import ModelRepository
from service.runtimes import Runtime
from service.settings import Settings


def get_repository(request: fastapi.Request) -> ModelRepository:
    return request.app.state.repository


def get_app_settings(request: fastapi.Request) -> Settings:
    return request.app.state.settings


def parse_version(text: str | None) -> int | None:
    """A version from a path or query string: a positive integer, or None."""
    if text is None or text == "":
        return None
    if not text.isdigit() or int(text) < 1:
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
