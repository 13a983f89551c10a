"""The OpenAPI document as the server behaves: every error status each route can send,
in the error shape it sends it in, and every schema reachable from components.

FastAPI documents a 422 in its own ``{"detail": ...}`` shape and nothing else; Kerve's
errors are ``{"error": {"code", "message"}}`` (``{"error": message}`` on the standard
protocols' routes), from the handlers in ``service.app``. Schemas that pydantic nests
under ``$defs`` in a hand-written request body move to ``components/schemas`` so that
every ``$ref`` resolves (a client generator or schemathesis follows them).
"""

from __future__ import annotations

from typing import Any

import fastapi
import pydantic
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from service import auth
from service.middleware import _speaks_a_protocol


class ErrorDetail(pydantic.BaseModel):
    code: str = pydantic.Field(description="Stable, for programs: invalid_image, overloaded, ...")
    message: str = pydantic.Field(description="For people: what was wrong and what to send.")


class Error(pydantic.BaseModel):
    """Kerve's error body."""

    error: ErrorDetail


class ProtocolError(pydantic.BaseModel):
    """The standard protocols' error body (Open Inference Protocol v2, TF Serving)."""

    error: str


DESCRIPTIONS = {
    400: "The request is malformed: not an image, bad JSON or base64, a wrong parameter.",
    401: "No valid API key (when keys are on).",
    404: "No such model, version or route.",
    405: "The route does not take this method.",
    413: "Too large: the body, an image's pixels, the images or tiles it asks for.",
    415: "The body's content type is not one the route takes.",
    422: "The parameters or JSON body do not match the schema.",
    500: "The model failed on this request, or an internal error (quote X-Request-ID).",
    503: "Not now: the model's queue or the server's capacity is full, the model is "
    "loading, or the server is shutting down. Retry after Retry-After seconds.",
    504: "No result within the model's deadline (timeout_ms).",
}
# What each kind of route can answer besides 200.
ALWAYS = (500,)
ON_A_MODEL = (400, 404, 503)  # a route that names a model: a bad version, unknown, not ready
ON_A_BODY = (400, 404, 413, 415, 422, 503, 504)  # a route that runs a model on a body
SECURITY_SCHEMES = {  # either one (service/auth.py)
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
READINESS = frozenset({"/readyz", "/v2/health/ready"})  # 503 in their own body, not an error


def document(app: fastapi.FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with Kerve's errors (``app.openapi`` caches it)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        _hoist_defs(schema, components)
        for model in (Error, ProtocolError):
            components[model.__name__] = _component(model, components)
        for route in app.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                for method in route.methods:
                    operation = schema["paths"][route.path_format][method.lower()]
                    _add_errors(operation, route)
                    _describe_versions(operation)
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        if getattr(app.state, "api_keys", None):  # keys on: /docs gets an Authorize button
            _add_security(schema, app.state.settings.metrics_need_key)
        app.openapi_schema = schema
    return app.openapi_schema


def _describe_versions(operation: dict) -> None:
    """A ``version`` parameter as the routes read it (``routes.params.parse_version``): a
    positive integer of at most 18 digits; in a query, empty is the newest."""
    for parameter in operation.get("parameters", []):
        if parameter["name"] == "version" and parameter["in"] in ("path", "query"):
            digits = "0*[1-9][0-9]*" if parameter["in"] == "path" else "(0*[1-9][0-9]*)?"
            parameter["schema"] = {
                "type": "string",
                "pattern": f"^{digits}$",
                "maxLength": 18,
                "description": "A version number, 1 or more."
                + ("" if parameter["in"] == "path" else " Omitted or empty: the newest."),
            }


def _add_errors(operation: dict, route: APIRoute) -> None:
    statuses = set(ALWAYS)
    if "POST" in route.methods:
        statuses.update(ON_A_BODY)
    elif "{" in route.path_format:
        statuses.update(ON_A_MODEL)
    readiness = route.path_format in READINESS
    if readiness:
        statuses.add(503)
    if "422" in operation.get("responses", {}):  # FastAPI's, in its own shape: ours instead
        statuses.add(422)
    shape = "ProtocolError" if getattr(route.endpoint, "protocol_errors", False) else "Error"
    responses = operation.setdefault("responses", {})
    for status in sorted(statuses):
        described = responses.setdefault(str(status), {})
        described.setdefault("description", DESCRIPTIONS[status])
        if status != 503 or not readiness:
            described["content"] = _error_content(shape)


def _add_security(schema: dict, metrics_need_key: bool) -> None:
    """The API key schemes, and a 401 on every operation that needs a key."""
    schema["components"]["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in schema["paths"].items():
        if auth.is_open(path, metrics_need_key):
            continue
        shape = "ProtocolError" if _speaks_a_protocol(path) else "Error"  # as the 401 is sent
        for operation in operations.values():
            operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            operation["responses"]["401"] = {
                "description": DESCRIPTIONS[401],
                "content": _error_content(shape),
            }


def _error_content(shape: str) -> dict:
    """A response's body: the error schema ``shape`` (Error or ProtocolError), as JSON."""
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}}


def _component(model: type[pydantic.BaseModel], components: dict) -> dict:
    """A model's JSON schema with its nested models as components of their own."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    return schema


def _hoist_defs(node: Any, components: dict) -> None:
    """Move every nested ``$defs`` into components, rewriting the refs to them."""
    if isinstance(node, dict):
        components.update(node.pop("$defs", {}))
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        for value in node.values():
            _hoist_defs(value, components)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, components)
