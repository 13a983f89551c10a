"""Connection limits (service/connections.py) on a real uvicorn server, over raw sockets:
header and body deadlines, the header size limit, and the connection cap.

uvicorn's own httptools protocol fails each test: it has no deadline (the slow clients
wait for ever), accepts any header size, and answers its cap with text."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import select
import socket
import time

import pytest

from service.connections import KerveHttpToolsProtocol
from tests.helpers import live_server, make_settings, metric_total, wait_until

DEADLINE_S = 1.0  # header and body deadlines
MAX_HEADER_BYTES = 8192
# A deadline's answer may come this much late on a busy 2-core machine.
SLACK_S = 1.5


@contextlib.contextmanager
def serving(tmp_path, **overrides):
    """The Kerve app (no models) on uvicorn with Kerve's protocol; yields the port."""
    settings = make_settings(tmp_path / "models", poll_interval_s=0, **overrides)
    (tmp_path / "models").mkdir(exist_ok=True)
    protocol = functools.partial(KerveHttpToolsProtocol, settings=settings)
    # Not waiting on /readyz: no connection of the test's own before the first one counted.
    with live_server(settings, ready=False, loop="uvloop", http=protocol) as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    with serving(
        tmp_path_factory.mktemp("connections"),
        header_timeout_s=DEADLINE_S,
        body_timeout_s=DEADLINE_S,
        max_header_bytes=MAX_HEADER_BYTES,
        max_connections=0,
    ) as served:
        yield served


class Connection:
    """A client socket that reads whole responses, keeping what follows for the next."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buffer += chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        if headers.get("transfer-encoding") == "chunked":
            while not re.search(rb"(^|\r\n)0\r\n\r\n", self.buffer):
                self._fill()
            raw, self.buffer = re.split(rb"(?:^|(?<=\r\n))0\r\n\r\n", self.buffer, maxsplit=1)
            body = b"".join(re.findall(rb"[0-9a-f]+\r\n(.*?)\r\n", raw, re.DOTALL))
        else:
            length = int(headers.get("content-length", 0))
            while len(self.buffer) < length:
                self._fill()
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed_by_server(self, within_s: float = 3.0) -> bool:
        self.sock.settimeout(within_s)
        try:
            return self.sock.recv(65536) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def get(path: str = "/healthz", extra: str = "", method: str = "GET") -> bytes:
    """A request's head; ``extra``: header lines, each ending in CRLF."""
    return f"{method} {path} HTTP/1.1\r\nHost: kerve\r\n{extra}\r\n".encode()


def assert_error(response, status: int, code: str) -> dict[str, str]:
    got, headers, body = response
    assert got == status, body
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == code
    return headers


def answer_time(connection: Connection, started: float) -> tuple[tuple, float]:
    response = connection.response()
    return response, time.monotonic() - started


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: ke"])
def test_a_head_that_stops_gets_408_and_the_connection_closes(port, sent):
    connection = Connection(port)
    started = time.monotonic()
    connection.send(sent)
    response, elapsed = answer_time(connection, started)
    assert_error(response, 408, "request_timeout")
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + SLACK_S
    assert connection.closed_by_server()


def test_a_slowloris_head_is_cut_at_the_deadline_however_it_trickles(port):
    connection = Connection(port)
    started = time.monotonic()
    connection.send(b"GET /healthz HTTP/1.1\r\nHost: kerve\r\n")
    # One byte every 0.3 s: each byte would reset a deadline that counted idle time.
    while not select.select([connection.sock], [], [], 0.3)[0]:
        assert time.monotonic() - started < DEADLINE_S + SLACK_S, "never cut off"
        connection.send(b"X")
    response, elapsed = answer_time(connection, started)
    assert_error(response, 408, "request_timeout")
    assert elapsed < DEADLINE_S + SLACK_S
    assert connection.closed_by_server()


def test_the_deadline_runs_from_each_request_not_from_the_connection(port):
    """A keep-alive client is unaffected: requests spaced past the header deadline, a head
    split across reads, a body sent in parts, and two requests pipelined in one send."""
    connection = Connection(port)
    started = time.monotonic()
    for _ in range(3):
        connection.send(get())
        assert connection.response()[0] == 200
        time.sleep(DEADLINE_S * 0.6)
    connection.send(get()[:20])
    time.sleep(DEADLINE_S * 0.5)
    connection.send(get()[20:])
    assert connection.response()[0] == 200
    body = b"not an image, but read whole before the route looks for a model"
    head = f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\n"
    connection.send(get("/v1/classify", head, "POST") + body[:5])
    time.sleep(DEADLINE_S * 0.5)
    connection.send(body[5:])
    assert connection.response()[0] != 408  # the route's own answer
    connection.send(get() + get("/v1/models"))
    assert connection.response()[0] == 200
    assert connection.response()[0] == 200
    assert time.monotonic() - started > 2 * DEADLINE_S  # outlived a deadline from the start
    assert not connection.closed_by_server(within_s=0.2)
    connection.close()


def test_headers_over_the_limit_get_431(port):
    filler = "a" * MAX_HEADER_BYTES
    connection = Connection(port)
    connection.send(get(extra=f"X-Filler: {filler}\r\n"))  # whole, in one read
    assert_error(connection.response(), 431, "headers_too_large")
    assert connection.closed_by_server()

    # 8 MiB of one header that never ends: cut after the limit, not buffered to the end.
    connection = Connection(port)
    connection.send(b"GET /healthz HTTP/1.1\r\nX-Filler: " + b"a" * (8 << 20))
    assert_error(connection.response(), 431, "headers_too_large")
    assert connection.closed_by_server()

    connection = Connection(port)  # just under the limit is served
    connection.send(get(extra=f"X-Filler: {filler[: MAX_HEADER_BYTES - 100]}\r\n"))
    assert connection.response()[0] == 200


def metric(port: int, status: str) -> float:
    connection = Connection(port)
    connection.send(get("/metrics"))
    text = connection.response()[2].decode()
    connection.close()
    return metric_total(text, "kerve_requests_total", task="classify", status=status)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_stops_is_ended_at_the_deadline(port, framing):
    before = metric(port, "499")
    connection = Connection(port)
    if framing == "chunked":
        head = "Transfer-Encoding: chunked\r\n"
        part = b"64\r\n" + b"x" * 50
    else:
        head, part = "Content-Length: 1000\r\n", b"x" * 100
    started = time.monotonic()
    connection.send(get("/v1/classify", f"Content-Type: image/png\r\n{head}", "POST") + part)
    response, elapsed = answer_time(connection, started)
    assert_error(response, 408, "request_timeout")
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + SLACK_S
    assert connection.closed_by_server()
    # The app saw the client gone (its 499), and the server goes on serving.
    wait_until(lambda: metric(port, "499") == before + 1, timeout_s=5)
    fresh = Connection(port)
    fresh.send(get())
    assert fresh.response()[0] == 200


def test_connections_over_the_cap_get_a_json_503_and_the_probes_still_answer(tmp_path):
    cap = 2
    with serving(tmp_path, max_connections=cap, retry_after_s=3) as port:
        served = [Connection(port) for _ in range(cap)]
        for connection in served:
            connection.send(get("/v1/models"))
            assert connection.response()[0] == 200
        extra = Connection(port)
        extra.send(get("/v1/models"))
        answer = extra.response()
        headers = assert_error(answer, 503, "overloaded")
        assert headers["retry-after"] == "3"
        # A length, not chunks: bench.robustness's load generator reads lengths only.
        assert int(headers["content-length"]) == len(answer[2])
        assert extra.closed_by_server()
        probe = Connection(port)  # over the cap too, and kept open
        for path in ("/healthz", "/metrics"):
            probe.send(get(path))
            assert probe.response()[0] == 200
        for connection in served:  # the first ones are unaffected by the extra ones
            connection.send(get("/v1/models"))
            assert connection.response()[0] == 200
        probe.close()
        served.pop().close()
        wait_until(lambda: _served_once(port), timeout_s=5)  # room again


def _served_once(port: int) -> bool:
    connection = Connection(port)
    connection.send(get("/v1/models"))
    status = connection.response()[0]
    connection.close()
    return status == 200
