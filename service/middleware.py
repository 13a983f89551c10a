"""The ASGI middleware around every request: request id, body limit, metrics, access log."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time

from service import deadlines, logs
from service.errors import PayloadTooLarge, ServiceError, Unavailable, error_body
from service.metrics import Metrics

access_log = logging.getLogger("service.access")
REQUEST_ID_HEADER = b"x-request-id"
OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # not requests in flight
_request_ids = random.Random()  # seeded from os.urandom, and again in a forked child
os.register_at_fork(after_in_child=_request_ids.seed)


class RequestContextMiddleware:
    def __init__(self, app, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # The latency histogram and request counter bound to each label set seen: binding
        # (prometheus_client's labels()) costs more than observing. As many entries as the
        # registry has series.
        self._series: dict[tuple[str, ...], tuple] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadlines.stamp_arrival()  # a request's deadline runs from here
        headers = dict(scope["headers"])
        request_id = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")[:128] or _new_id()
        logs.request_id.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                extra = (REQUEST_ID_HEADER, request_id.encode("latin-1"))
                message["headers"] = [*message.get("headers", []), extra]
            await send(message)

        counted = scope["path"] not in OPERATIONAL_PATHS
        if counted:
            self.metrics.in_flight.inc()
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > self.max_body_bytes:
                limit = self.max_body_bytes
                too_large = PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
                await send_error(scope, send_with_id, too_large)  # before the body is read
            else:
                await self.app(scope, self._limited(receive), send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when its graceful shutdown ends
            # (SERVE_GRACEFUL_SHUTDOWN_S); each gets Kerve's JSON 503, not a text 500.
            if response_started:
                raise
            gone = Unavailable("the server is shutting down; retry on another replica")
            await send_error(scope, send_with_id, gone)
        finally:
            if counted:
                self.metrics.in_flight.dec()
            self._record(scope, status, time.perf_counter() - started)

    def _limited(self, receive):
        """Count body bytes as they arrive (chunked uploads declare no length)."""
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(f"the body exceeds {self.max_body_bytes} bytes")
            return message

        return limited_receive

    def _record(self, scope, status: int, elapsed: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")  # the template, never the raw path
        state = scope.get("state", {})
        model, version = state.get("model", ""), str(state.get("version", ""))
        # Set on each task and protocol handler by its route factory.
        task = getattr(getattr(route, "endpoint", None), "metrics_task", "")
        key = (scope["method"], path, task, str(status), model, version)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._bind(*key)
        latency, requests = series
        latency.observe(elapsed)
        requests.inc()
        access_log.info(
            "%s %s %d",
            scope["method"],
            scope["path"],
            status,
            extra={
                "duration_ms": round(elapsed * 1000, 2),
                "status": status,
                "model": model or None,
            },
        )

    def _bind(self, method: str, route: str, task: str, status: str, model: str, version: str):
        labels = dict(route=route, task=task, status=status, model=model, version=version)
        return (
            self.metrics.request_latency.labels(method=method, **labels),
            self.metrics.requests.labels(**labels),
        )


async def send_error(scope, send, error: ServiceError) -> None:
    """An error answered by the middleware itself, in the error shape of the route it was
    sent to, closing the connection (its body may be unread)."""
    document = error_body(error.code, error.message, _speaks_a_protocol(scope["path"]))
    body = json.dumps(document).encode()
    # A length, as the app's own answers have: without one uvicorn sends it chunked.
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _new_id() -> str:
    """A request id: 32 random hex digits, as long as a uuid4's, with no system call:
    uuid4's os.urandom took 2 to 5% of the event loop's time under load."""
    return f"{_request_ids.getrandbits(128):032x}"


def _speaks_a_protocol(path: str) -> bool:
    """Whether a path is one of the standard protocols' routes that take a body (v2's
    infer, TF Serving's :predict), whose errors are ``{"error": message}``. Routing has
    not run when a body is refused by its declared length, so the path decides."""
    return path.startswith("/v2/") or path.endswith(":predict")
