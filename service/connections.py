"""uvicorn's httptools protocol with limits on how long and how much a client may hold a
connection: a header and a body deadline, a header size limit, and a connection cap.

uvicorn (0.54) has none of the first three: its only timer is the keep-alive one, armed
after a response and cancelled by any byte, so a client that opens a connection, or
starts a request, and then trickles or sends nothing holds it forever; and llhttp, its
parser, has no size limit (httptools buffers a header of any length).

- Header deadline: a request's head must be complete ``header_timeout_s`` after its first
  byte, or after the connection opened for the first request. Idle time between requests
  on a keep-alive connection stays uvicorn's ``timeout_keep_alive`` (5 s).
- Header size: the request line and headers, over ``max_header_bytes``: 431.
- Body deadline: a body (Content-Length or chunked) must be complete ``body_timeout_s``
  after its headers. If not, the app sees the client gone (``http.disconnect``, Kerve's
  499) and the connection ends.
- Connections: a connection opened while ``max_connections`` are open gets a JSON 503
  with Retry-After to its requests, and is closed; so does a request while as many are
  running. The probes and /metrics are exempt (a refused liveness probe would restart a
  pod for being busy). uvicorn's ``limit_concurrency`` is not used: it counts the open
  connections at each request, so one connection too many refuses the requests of every
  connection, those served before it included.

Each answers (408 or 431, JSON, ``Connection: close``) when no response is under way on
the connection, then closes. A request that arrives in one read (almost all do) arms no
timer: a deadline becomes a timer only when a read ends with a head or body unfinished.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from service.errors import (
    HeadersTooLarge,
    Overloaded,
    RequestTimeout,
    ServiceError,
    error_body,
)
from service.middleware import OPERATIONAL_PATHS, send_error
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)
# After an answer, how long to read and drop what the client still sends before closing:
# closing a socket with unread data sends a reset, which can destroy the answer before
# the client reads it (nginx's "lingering close"). The client closing ends it sooner.
LINGER_S = 2.0

IDLE, HEAD, BODY = "idle", "head", "body"  # where the parser is in the request stream


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head over the limit."""


class KerveHttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    """``uvicorn.run(http="service.connections:KerveHttpToolsProtocol")``. Settings from
    ``get_settings()`` (so each worker of ``--workers N`` reads them from the environment)
    unless given: ``http=functools.partial(KerveHttpToolsProtocol, settings=...)``."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = settings or get_settings()
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.max_header_bytes = settings.max_header_bytes
        self.retry_after_s = settings.retry_after_s
        self.max_connections = settings.max_connections
        self._over_cap = False  # opened while max_connections were open
        self._state = IDLE
        self._deadline: float | None = None  # of the head or body being read, if any
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._head_bytes = 0  # of the head being read, counted per read
        self._begun = 0  # requests begun during the current read
        self._closing = False  # answered; dropping what arrives until the close

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections:
            self._over_cap = len(self.connections) > self.max_connections  # itself included
        self._deadline = self.loop.time() + self.header_timeout_s
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, plus the head size count and the deadline timer after each read."""
        if self._closing:
            return
        self._unset_keepalive_if_required()
        before, self._begun = self._state, 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:  # served as a plain request
                self._unsupported_upgrade_warning()
                self._arm()
            return
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, HeadTooLarge):
                self._head_too_large()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self._cancel_timer()
            self.send_400_response(msg)
            return
        if self.transport.is_closing():
            return
        if self._state == HEAD:
            # The whole read is this head's unless the head began after another request
            # ended in it; then its share is unknown and counted from the next read (the
            # complete head is measured exactly in on_headers_complete).
            if self._begun == 0 or (self._begun == 1 and before == IDLE):
                self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._head_too_large()
                return
        self._arm()

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timer()  # the transport is the WebSocket protocol's from here
        super().handle_websocket_upgrade()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun += 1
        self._state, self._head_bytes = HEAD, 0
        if self._deadline is None:  # a first request keeps the connection's deadline
            self._deadline = self.loop.time() + self.header_timeout_s

    def on_headers_complete(self) -> None:
        size = len(self.parser.get_method()) + len(self.url) + 14  # " ", " HTTP/1.1\r\n", "\r\n"
        size += sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            raise HeadTooLarge
        self._state = BODY
        self._deadline = self.loop.time() + self.body_timeout_s
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._state, self._deadline = IDLE, None
        super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        refused = app is httptools_impl.service_unavailable  # a limit_concurrency if given
        if self.max_connections:
            refused = refused or self._over_cap or len(self.tasks) >= self.max_connections
        if refused:
            app = self.app if cycle.scope["path"] in OPERATIONAL_PATHS else self._over_capacity
        super()._start_asgi_task(cycle, app)

    async def _over_capacity(self, scope, receive, send) -> None:
        error = Overloaded("the server has too many connections; retry later", self.retry_after_s)
        await send_error(scope, send, error)

    # Deadlines

    def _arm(self) -> None:
        """One timer, at the deadline of the head or body being read; none between them."""
        if self._timer is not None and self._timer_at == self._deadline:
            return
        self._cancel_timer()
        if self._deadline is not None:
            self._timer = self.loop.call_at(self._deadline, self._expired)
            self._timer_at = self._deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None

    def _expired(self) -> None:
        self._timer = self._timer_at = None
        if self.transport.is_closing() or self._closing:
            return
        if self._state == BODY:
            what, limit = "body", self.body_timeout_s
        else:
            what, limit = "headers", self.header_timeout_s
        logger.info("the client did not send its request's %s within %g s", what, limit)
        self._answer_and_close(
            RequestTimeout(f"the request's {what} did not arrive within {limit:g} s")
        )

    def _head_too_large(self) -> None:
        logger.info("a request's headers exceed %d bytes", self.max_header_bytes)
        message = f"the request line and headers exceed {self.max_header_bytes} bytes"
        self._answer_and_close(HeadersTooLarge(message))

    # Answers

    def _answer_and_close(self, error: ServiceError) -> None:
        """Answer unless a response is under way (pipelined requests), then close. The app
        waiting on this request's body, if any, gets http.disconnect."""
        self._cancel_timer()
        self._closing = True
        cycle = self.cycle  # the request whose body is late, or the one before the late head
        if self._state == BODY:
            answer = not self.pipeline and cycle is not None and not cycle.response_started
        else:
            answer = not self.pipeline and (cycle is None or cycle.response_complete)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # as connection_lost does: receive() says disconnect
            cycle.message_event.set()
        if not answer:
            self.transport.close()
            return
        body = json.dumps(error_body(error.code, error.message)).encode()
        head = [httptools_impl.STATUS_LINE[error.status_code]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        if not self.transport.can_write_eof():  # TLS
            self.transport.close()
            return
        self.transport.write_eof()  # the client reads the answer, then the end
        self.flow.resume_reading()  # and what it still sends is read and dropped
        self.loop.call_later(LINGER_S, self.transport.close)
