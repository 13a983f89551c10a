"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

import fastapi

from service import auth
from service.metrics import CONTENT_TYPE
from service.routes.params import get_repository

router = fastapi.APIRouter(tags=["operations"])
HIDDEN = "failed to load (send an API key to see why)"


@router.get("/healthz")
async def check_health() -> dict[str, str]:
    """Liveness: the process is up and its event loop answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {"description": "Not ready: still loading, or a model has no version available."}
    },
)
async def check_readiness(request: fastapi.Request) -> fastapi.responses.JSONResponse:
    """Readiness: the first load is done and every model serves a version."""
    repository = get_repository(request)
    ready = repository.is_ready()
    # With API keys on, a caller without one learns which versions failed, not why: the
    # errors name files and exceptions.
    shown = getattr(request.state, auth.VALID_KEY_STATE, True)
    failed = {
        name: {
            str(e.version): e.error if shown else HIDDEN
            for e in repository.versions(name)
            if e.error
        }
        for name in repository.model_names()
    }
    body = {
        "ready": ready,
        "initial_load_done": repository.initial_load_done,
        "models": repository.summary(),
        "failed": {name: errors for name, errors in failed.items() if errors},
    }
    headers = {} if ready else {"Retry-After": str(repository.settings.retry_after_s)}
    return fastapi.responses.JSONResponse(body, status_code=200 if ready else 503, headers=headers)


@router.get("/metrics", response_class=fastapi.responses.PlainTextResponse)
async def export_metrics(request: fastapi.Request) -> fastapi.Response:
    """Prometheus metrics in the text exposition format."""
    return fastapi.Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)
