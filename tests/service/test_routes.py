from __future__ import annotations

import asyncio
import json
import logging
import re
import socket

import httpx
import pytest

from service.errors import ClientDisconnected
from service.routes.params import parse_version, unless_disconnected
from tests.helpers import (
    encode,
    live_server,
    make_settings,
    publish_colour_classifier,
    solid,
    wait_until,
)

pytestmark = pytest.mark.anyio


class FakeRequest:
    """Stands in for a Starlette request whose client hangs up after ``after_s``."""

    def __init__(self, after_s: float | None) -> None:
        self.after_s = after_s

    async def receive(self) -> dict:
        if self.after_s is None:
            await asyncio.Event().wait()  # never disconnects
        await asyncio.sleep(self.after_s)
        return {"type": "http.disconnect"}


async def test_work_is_cancelled_when_the_client_hangs_up():
    cancelled = asyncio.Event()

    async def slow_inference():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(ClientDisconnected) as gone:
        await asyncio.wait_for(unless_disconnected(FakeRequest(0.05), slow_inference()), 2)
    assert gone.value.status_code == 499
    assert cancelled.is_set()


async def test_work_finishes_while_the_client_stays():
    async def quick():
        await asyncio.sleep(0.01)
        return 42

    assert await unless_disconnected(FakeRequest(None), quick()) == 42


def test_version_strings():
    assert parse_version(None) is None and parse_version("") is None
    assert parse_version("12") == 12
    for bad in ("0", "-1", "1.5", "v2", "１"):
        with pytest.raises(Exception, match="positive integer"):
            parse_version(bad)


def test_chunked_body_over_the_limit_is_413(repository):
    from tests.helpers import make_settings, start_client, wait_ready

    with start_client(make_settings(repository, max_body_bytes=100_000)) as client:
        wait_ready(client)

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(50):
                yield b"\0" * 10_000

        bodies = (("/v1/classify", "image/png"), ("/v1/generate", "application/json"))
        for path, content_type in bodies:
            # A JSON body is read by FastAPI itself, which made any failure a 400.
            response = client.post(path, content=chunks(), headers={"Content-Type": content_type})
            assert response.status_code == 413, (path, response.text)
            assert response.json()["error"]["code"] == "payload_too_large"
        ok = client.post(
            "/v1/classify",
            content=encode(solid((0, 0, 200)), "PNG"),
            headers={"Content-Type": "image/png"},
        )
        assert ok.status_code == 200


@pytest.mark.parametrize("count", [65, 66, 100])
def test_more_files_than_the_limit_is_413_however_many(client, count):
    """The multipart parser stops at the limit + 1 files with its own error (was a 400)."""
    files = [("file", (f"{i}.png", b"x", "image/png")) for i in range(count)]
    response = client.post("/v1/classify", files=files)
    assert response.status_code == 413, response.text
    assert "at most 64 per request" in response.json()["error"]["message"]


def test_request_metrics_carry_the_task_even_for_refused_requests(client):
    from tests.helpers import wait_ready

    wait_ready(client)
    assert client.post("/v1/classify", content=b"garbage",
                       headers={"Content-Type": "image/jpeg"}).status_code == 400  # fmt: skip
    assert client.post("/v1/models/colours/segment", content=b"x",
                       headers={"Content-Type": "image/jpeg"}).status_code >= 400  # fmt: skip
    text = client.get("/metrics").text
    assert 'route="/v1/classify",status="400",task="classify"' in text
    assert 'route="/v1/models/{name}/segment",status="' in text and 'task="segment"' in text


def test_a_client_that_hangs_up_mid_upload_is_499_not_a_server_error(tmp_path, caplog):
    """Raw, multipart and JSON bodies cut short: counted as 499, logged without a
    traceback, and the server goes on answering."""
    publish_colour_classifier(tmp_path / "models")
    image = encode(solid((0, 200, 0)), "PNG")
    boundary = "cut"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + image
    starts = {
        "image/png": image,
        f"multipart/form-data; boundary={boundary}": multipart,
        "application/json": b'{"image": {"b64": "iVBORw0KGgo',
    }
    with live_server(make_settings(tmp_path / "models")) as url:
        port = int(url.rsplit(":", 1)[1])
        for content_type, start in starts.items():
            with socket.create_connection(("127.0.0.1", port)) as connection:
                head = (
                    f"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(start) + 100_000}\r\n\r\n"
                )
                connection.sendall(head.encode() + start)  # then hang up, 100 KB short

        def statuses() -> dict[str, float]:
            text = httpx.get(f"{url}/metrics").text
            found = re.findall(
                r'^kerve_requests_total\{[^}]*route="/v1/classify"[^}]*status="(\d+)"[^}]*\} (\S+)',
                text,
                re.MULTILINE,
            )
            return {status: float(count) for status, count in found}

        wait_until(lambda: statuses().get("499") == 3)
        assert set(statuses()) == {"499"}
        body, headers = encode(solid((0, 200, 0)), "PNG"), {"Content-Type": "image/png"}
        assert httpx.post(f"{url}/v1/classify", content=body, headers=headers).status_code == 200
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_requests_cut_off_by_the_end_of_a_drain_get_a_json_503_with_their_id():
    """uvicorn cancels what still runs when SERVE_GRACEFUL_SHUTDOWN_S is over."""
    from service.metrics import Metrics
    from service.middleware import RequestContextMiddleware

    async def slow_app(scope, receive, send):
        await asyncio.sleep(60)

    middleware = RequestContextMiddleware(slow_app, Metrics(), max_body_bytes=1000)
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": []}
    task = asyncio.create_task(middleware(scope, receive, send))
    await asyncio.sleep(0.05)
    task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
    await task
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"content-type"] == b"application/json"
    assert len(headers[b"x-request-id"]) == 32 and headers[b"retry-after"] == b"1"
    assert json.loads(body["body"])["error"]["code"] == "unavailable"
