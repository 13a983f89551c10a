"""create_app(settings) -> FastAPI; the lifespan opens and closes the model repository."""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import re

import fastapi
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route

import kerve_backend
from kerve_backend import keras
from service import auth, logs, openapi
from service.admission import Admission
from service.errors import (
    BadRequest,
    ClientDisconnected,
    DeadlineExceeded,
    ServiceError,
    Unavailable,
    UnsupportedMediaType,
    error_body,
)
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.repository import ModelRepository
from service.routes import health, models, tasks, tfserving, uploads, v2
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)
SWAGGER_ASSETS = "/static/swagger-ui"


def create_app(settings: Settings | None = None) -> fastapi.FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: fastapi.FastAPI):
        devices = ", ".join(kerve_backend.devices())
        logger.info("Keras backend %s, devices: %s", keras.backend.backend(), devices)
        admission = Admission.create(
            settings.preprocess_threads,
            settings.max_pixels_in_flight,
            settings.retry_after_s,
            metrics.pixels_in_flight,
        )
        repository = ModelRepository(settings, metrics, admission)
        app.state.repository = repository
        await repository.start()
        try:
            yield
        finally:
            await repository.stop()
            admission.pool.shutdown(wait=True)

    app = fastapi.FastAPI(
        title="Kerve",
        summary="Keras model serving with dynamic batching.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.openapi = lambda: openapi.document(app)  # Kerve's errors, every $ref resolving
    app.state.settings = settings
    app.state.metrics = metrics
    # Added first, so it runs inside the request context: a 401 has its id and its metrics.
    app.state.api_keys = auth.install(app, settings)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes
    )
    for exception_type, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exception_type, handler)
    for router in (tasks.task_router(), models.router, health.router, v2.router, tfserving.router):
        # The routes join the app's own list, in order: FastAPI (0.16x) matches an
        # included router's routes twice per request, to pick the router and then inside
        # it, which cost the generate route about 50 us a request (python -m bench.stages).
        app.router.routes.extend(router.routes)
    _add_offline_docs(app)
    _add_page(app)
    return app


def _add_page(app: fastapi.FastAPI) -> None:
    """The try-it page: GET / and its files under /ui (service/static)."""
    static = importlib.resources.files("service") / "static"
    app.mount("/ui", StaticFiles(directory=str(static), html=True), name="ui")

    @app.get("/", include_in_schema=False)
    async def show_page() -> fastapi.responses.FileResponse:
        return fastapi.responses.FileResponse(str(static / "index.html"))


def _add_offline_docs(app: fastapi.FastAPI) -> None:
    """Swagger UI served from the fastapi-offline package: /docs works with no internet.

    Its Swagger UI is 5.x, which renders the OpenAPI 3.1 that FastAPI emits (the 4.x
    of swagger-ui-bundle shows "Unable to render this definition" instead).
    """
    assets = importlib.resources.files("fastapi_offline") / "static"
    app.mount(SWAGGER_ASSETS, StaticFiles(directory=str(assets)))

    @app.get("/docs", include_in_schema=False)
    async def show_docs() -> fastapi.responses.HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="Kerve API",
            swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon.png",
        )


def _error(
    status: int,
    code: str,
    message: str,
    headers: dict | None = None,
    request: fastapi.Request | None = None,
):
    """Kerve's error body; the standard protocols' own on their routes."""
    route = request.scope.get("route") if request is not None else None
    protocol = getattr(getattr(route, "endpoint", None), "protocol_errors", False)
    body = error_body(code, message, protocol)
    return fastapi.responses.JSONResponse(body, status_code=status, headers=headers)


async def _service_error(request: fastapi.Request, error: ServiceError):
    if isinstance(error, Unavailable | DeadlineExceeded):
        # Overload's answers, counted in the metrics: a warning line for each of thousands
        # a second would cost the event loop that is refusing them.
        logger.info("%s: %s", error.code, error.message)
    elif error.status_code >= 500:
        logger.warning("%s: %s", error.code, error.message)
    return _error(error.status_code, error.code, error.message, error.headers, request)


async def _validation_error(request: fastapi.Request, error: RequestValidationError):
    # A JSON-body route answers a body it cannot read as the image routes do: 415 for
    # another content type, 400 for malformed JSON; 422 is for JSON of the wrong shape.
    route = request.scope.get("route")
    if getattr(getattr(route, "endpoint", None), "json_body", False):
        media_type = uploads.media_type(request)
        if media_type and media_type != "application/json" and not media_type.endswith("+json"):
            wrong = UnsupportedMediaType(
                f"unsupported content type {media_type!r}; send application/json"
            )
            return await _service_error(request, wrong)
    kinds = {(item.get("type"), tuple(item.get("loc", ()))) for item in error.errors()}
    if any(kind == "json_invalid" for kind, _ in kinds):
        return await _service_error(request, BadRequest("the body is not valid JSON"))
    if ("missing", ("body",)) in kinds:
        return await _service_error(request, BadRequest("the request has no JSON body"))
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg')}"
        for item in error.errors()
    )
    message = problems or "the request does not match the schema"
    return _error(422, "invalid_request", message, request=request)


async def _http_error(request: fastapi.Request, error: HTTPException):
    # FastAPI turns anything raised while it reads a JSON body into a 400: the body limit
    # (413) and a client hanging up (499) keep their own answers.
    if isinstance(error.__cause__, ServiceError):
        return await _service_error(request, error.__cause__)
    if isinstance(error.__cause__, ClientDisconnect):
        return await _client_gone(request, error.__cause__)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    headers = getattr(error, "headers", None)
    if error.status_code == 405 and (allowed := _allowed_methods(request)):
        headers = {**(headers or {}), "Allow": allowed}
    return _error(error.status_code, code, str(error.detail), headers, request)


def _allowed_methods(request: fastapi.Request) -> str:
    """A 405's Allow: the methods of the most specific routes whose path matches, those
    with the most literal characters. Starlette names the first route's alone, so
    /v1/models/m:predict said GET (GET /v1/models/{name} matches it too) and not POST."""
    path = request.scope.get("path", "")
    matching = [
        (len(re.sub(r"{[^}]*}", "", route.path_format)), route.methods)
        for route in request.app.router.routes
        if isinstance(route, Route) and route.methods and route.path_regex.match(path)
    ]
    most = max((literal for literal, _ in matching), default=0)
    allowed = {method for literal, methods in matching if literal == most for method in methods}
    return ", ".join(sorted(allowed))


async def _client_gone(request: fastapi.Request, error: ClientDisconnect):
    """A client that hangs up while sending its body is its own outcome, 499 in the metrics
    and an info line, never a 5xx that alerts watch: any client could inflate those."""
    logger.info("the client closed the connection before sending its whole request")
    return await _service_error(request, ClientDisconnected("the client closed the connection"))


async def _unexpected_error(request: fastapi.Request, error: Exception):
    request_id = logs.request_id.get()
    logger.exception("unhandled error")
    return _error(
        500,
        "internal",
        f"internal error; quote request id {request_id} when reporting it",
        {"X-Request-ID": request_id},
        request,
    )


EXCEPTION_HANDLERS = {
    ServiceError: _service_error,
    RequestValidationError: _validation_error,
    HTTPException: _http_error,
    ClientDisconnect: _client_gone,
    Exception: _unexpected_error,
}
