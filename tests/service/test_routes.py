from __future__ import annotations

import asyncio

import pytest

from service.errors import ClientDisconnected
from service.routes.params import parse_version, unless_disconnected
from tests.helpers import encode, solid

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

        response = client.post(
            "/v1/classify", content=chunks(), headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        ok = client.post(
            "/v1/classify",
            content=encode(solid((0, 0, 200)), "PNG"),
            headers={"Content-Type": "image/png"},
        )
        assert ok.status_code == 200


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
