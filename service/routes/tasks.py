"""The task routes, registered from the runtime registry with one route factory.

Each runtime with a verb gets POST /v1/<verb> (the task's default model, or
``?model=``), /v1/models/{name}/<verb> (that model's newest version) and
/v1/models/{name}/versions/{version}/<verb>, all served by one handler, as MLServer
and KServe register one handler on several paths.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import fastapi

from service.errors import PayloadTooLarge
from service.routes.params import (
    ModelName,
    Version,
    get_app_settings,
    resolve_runtime,
    respond,
    unless_disconnected,
)
from service.routes.uploads import IMAGE_REQUEST_BODY, read_images, read_one_image
from service.runtimes import RUNTIMES, Runtime

# (path template, what the docs say of it, its extra parameters)
FORMS = (
    ("/v1/{verb}", "with the task's default model, or the one named", "plain"),
    ("/v1/models/{{name}}/{verb}", "with the newest version of one model", "model"),
    ("/v1/models/{{name}}/versions/{{version}}/{verb}", "with one exact model version", "version"),
)


def task_router() -> fastapi.APIRouter:
    router = fastapi.APIRouter()
    for runtime_class in RUNTIMES.values():
        if runtime_class.verb is not None:
            for template, scope, form in FORMS:
                _add_route(
                    router, runtime_class, template.format(verb=runtime_class.verb), scope, form
                )
    return router


def _add_route(router, runtime_class: type[Runtime], path: str, scope: str, form: str) -> None:
    takes_png = hasattr(runtime_class.Response, "as_png")
    responses: dict[int | str, dict[str, Any]] = {}
    if takes_png:
        responses[200] = {
            "content": {"image/png": {}},
            "description": "JSON by default; with `Accept: image/png` preferred, the PNG alone: "
            + (inspect.getdoc(runtime_class.Response.as_png) or ""),
        }
    endpoint = _endpoint(runtime_class, form)
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        response_model=runtime_class.Response,
        response_model_exclude_none=False,
        summary=f"{runtime_class.verb.capitalize()} {scope}",
        description=f"{runtime_class.summary}\n\nServed {scope}.",
        name=f"{runtime_class.verb}_{form}",
        tags=[runtime_class.task],
        openapi_extra=None if runtime_class.body == "params" else IMAGE_REQUEST_BODY,
        responses=responses,
    )


def _endpoint(runtime_class: type[Runtime], form: str):
    """One handler for a task's route form, its signature built for FastAPI to read."""

    async def serve_task(request: fastapi.Request, params, name=None, version=None):
        settings = get_app_settings(request)
        images: list[bytes] = []
        if runtime_class.body == "images":
            images = await read_images(request, settings.max_images_per_request)
        elif runtime_class.body == "image":
            images = [await read_one_image(request, runtime_class.task)]
        asked = runtime_class.images_asked(params)
        if asked > settings.max_images_per_request:
            raise PayloadTooLarge(
                f"{asked} images asked; at most {settings.max_images_per_request} per request"
            )
        runtime = resolve_runtime(request, runtime_class.task, name, version)
        work = runtime.infer(runtime_class.make_request(params, images))
        return respond(request, await unless_disconnected(request, work))

    where = fastapi.Body() if runtime_class.body == "params" else fastapi.Query()
    parameters = [
        _parameter("request", fastapi.Request),
        _parameter("params", Annotated[runtime_class.Params, where]),
    ]
    if form == "plain":
        parameters += [
            _parameter("name", ModelName, None),
            _parameter("version", Version, None),
        ]
    else:
        parameters.append(_parameter("name", Annotated[str, fastapi.Path()]))
    if form == "version":
        parameters.append(_parameter("version", Annotated[str, fastapi.Path()]))
    serve_task.__signature__ = inspect.Signature(parameters)
    serve_task.metrics_task = runtime_class.verb  # the middleware's task label
    serve_task.json_body = runtime_class.body == "params"  # the app's error handlers read it
    return serve_task


def _parameter(name: str, annotation, default=inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )
