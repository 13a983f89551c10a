"""Time each stage of one request in-process, to see what is worth tuning.

    python -m bench.stages --task generate --models-dir models [--serving-path]

Per body of the task's workload, the median over repeats of: ``preprocess``
(decode, resize, normalise), ``predict_batch`` with a batch of 1, ``postprocess``,
and the JSON encoding two ways (pydantic's ``model_dump_json``, and FastAPI's
``jsonable_encoder`` + ``json.dumps``, which a route returning a model goes through on
older FastAPI; recent FastAPI serialises a response model as ``model_dump_json`` does).

``--serving-path`` adds what the service spends around those stages on every request,
tens of microseconds each, which matter where the model is as cheap (the generator):
a hop to the thread pool and back (``run_in_executor``, as ``preprocess`` and
``postprocess`` each take, on uvloop), matching the task route among the app's routes,
the request middleware (request id, metrics, the JSON access log line, written to
/dev/null here), and encoding each PNG of the answer. Alone in one process, these
understate what they cost a loaded server, where a hop also wakes a thread and hands
the GIL over.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import io
import json
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
from fastapi.encoders import jsonable_encoder
from PIL import Image
from starlette.routing import Match

from bench import standalone
from bench.server import ROOT
from bench.workloads import TASKS
from service import imaging, logs
from service.app import create_app
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.runtimes.base import PngImage
from service.settings import Settings


def median_ms(function, repeats: int) -> float:
    function()  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def stages(served: standalone.Served, repeats: int) -> dict[str, float]:
    runtime = served.runtime
    totals: dict[str, list[float]] = {}
    for body in served.workload.bodies:
        request = served.workload.request(body)
        prepared = runtime.preprocess(request)
        outputs = runtime.predict_batch(prepared.samples)
        response = runtime.postprocess(outputs, request, prepared.context)
        measured = {
            "preprocess": median_ms(lambda: runtime.preprocess(request), repeats),  # noqa: B023
            "predict_batch (1)": median_ms(
                lambda: runtime.predict_batch(prepared.samples),  # noqa: B023
                repeats,
            ),
            "postprocess": median_ms(
                lambda: runtime.postprocess(outputs, request, prepared.context),  # noqa: B023
                repeats,
            ),
            "model_dump_json": median_ms(response.model_dump_json, repeats),
            "jsonable_encoder + json.dumps": median_ms(
                lambda: json.dumps(jsonable_encoder(response)),  # noqa: B023
                repeats,
            ),
        }
        for stage, ms in measured.items():
            totals.setdefault(stage, []).append(ms)
    return {stage: statistics.median(values) for stage, values in totals.items()}


def serving_path(served: standalone.Served, models_dir: Path, repeats: int) -> dict[str, float]:
    """The service's own cost per request around the runtime's stages (see the docstring)."""
    runtime = served.runtime
    app = create_app(Settings(models_dir=models_dir))
    path = f"/v1/models/{runtime.name}/versions/{runtime.version}/{runtime.verb}"
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "state": {}}
    scope |= {"headers": [(b"content-length", b"2")], "query_string": b""}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        measured = {
            "thread-pool hop (run_in_executor)": runner.run(_pool_hop(repeats)),
            "route match (the task route)": median_ms(lambda: _match(app, scope), repeats),
            "middleware (id, metrics, access log)": runner.run(_middleware(scope, repeats)),
        }
    body = served.workload.bodies[0]
    request = served.workload.request(body)
    prepared = runtime.preprocess(request)
    outputs = runtime.predict_batch(prepared.samples)
    response = runtime.postprocess(outputs, request, prepared.context)
    pictures = [Image.open(io.BytesIO(png.png)) for png in _png_images(response)]
    if pictures:
        measured[f"encode_png, each of {len(pictures)}"] = statistics.median(
            median_ms(lambda: imaging.encode_png(picture), repeats)  # noqa: B023
            for picture in pictures
        )
    return measured


async def _pool_hop(repeats: int) -> float:
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return await _median_ms_async(lambda: loop.run_in_executor(pool, int), repeats)


def _match(app, scope: dict) -> None:
    for route in app.router.routes:
        if route.matches(scope)[0] == Match.FULL:
            return
    raise LookupError(f"no route matches {scope['path']}")


async def _middleware(scope: dict, repeats: int) -> float:
    """The middleware around an app that answers at once, less that app alone."""

    async def answer(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        pass

    middleware = RequestContextMiddleware(answer, Metrics(), max_body_bytes=1 << 20)
    service_logger = logging.getLogger("service")
    saved = service_logger.handlers, service_logger.level, service_logger.propagate
    with open(os.devnull, "w") as devnull:
        handler = logging.StreamHandler(devnull)
        handler.setFormatter(logs.JsonFormatter())
        service_logger.handlers = [handler]
        service_logger.level, service_logger.propagate = logging.INFO, False
        try:
            wrapped = await _median_ms_async(
                lambda: middleware(dict(scope), receive, send), repeats
            )
        finally:
            service_logger.handlers, service_logger.level, service_logger.propagate = saved
    alone = await _median_ms_async(lambda: answer(dict(scope), receive, send), repeats)
    return wrapped - alone


async def _median_ms_async(make: Callable[[], Awaitable], repeats: int) -> float:
    await make()  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await make()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _png_images(value) -> list[PngImage]:
    """Every PNG in a response, however deep in its fields."""
    if isinstance(value, PngImage):
        return [value]
    if isinstance(value, list | tuple):
        return [png for item in value for png in _png_images(item)]
    fields = type(value).model_fields if hasattr(type(value), "model_fields") else {}
    return [png for name in fields for png in _png_images(getattr(value, name))]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="classify")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", help="default: the task's demo model")
    parser.add_argument("--engine", default="keras", help="keras (default), auto, ...")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--serving-path", action="store_true", help="the service's own cost too")
    args = parser.parse_args(argv)
    version_dir = standalone.find_version(args.models_dir, args.task, args.model)
    served = standalone.load(version_dir, args.task, engine=args.engine)
    measured = stages(served, args.repeats)
    print(f"{args.task}, {version_dir.parent.name}/{version_dir.name} (median ms per request):")
    for stage, ms in measured.items():
        print(f"  {stage:<38} {ms:8.3f}")
    if args.serving_path:
        around = serving_path(served, args.models_dir, max(args.repeats, 200))
        print("around them, on every request (median ms):")
        for stage, ms in around.items():
            print(f"  {stage:<38} {ms:8.3f}")
        measured |= around
    return measured


if __name__ == "__main__":
    main()
