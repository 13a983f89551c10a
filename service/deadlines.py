"""When a request arrived and when its time is up, for every step that serves it.

The middleware stamps a request's arrival; a runtime turns it into the request's
deadline (arrival + the model's ``timeout_ms``). The deadline travels in a context
variable, into the decoding threads too (they run in a copy of the request's context),
so that a request with many images stops between two of them once its time is up
instead of decoding on for a client that has had its 504.
"""

from __future__ import annotations

import contextvars
import time

from service.errors import DeadlineExceeded

arrived_at: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "arrived_at", default=None
)
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def stamp_arrival() -> None:
    """Called by the middleware as a request's headers arrive."""
    arrived_at.set(time.monotonic())


def start(timeout_ms: float) -> float:
    """The current request's deadline (time.monotonic()), set for the steps that follow:
    ``timeout_ms`` from its arrival, or from now outside a request."""
    arrived = arrived_at.get()
    deadline = (time.monotonic() if arrived is None else arrived) + timeout_ms / 1000
    _deadline.set(deadline)
    return deadline


def remaining(deadline: float) -> float:
    return deadline - time.monotonic()


def check() -> None:
    """Raise DeadlineExceeded (504) if the current request's deadline has passed."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("the request's deadline passed before its images were decoded")
