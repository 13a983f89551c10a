"""Admission control: what a request may hold before any of its work begins.

Before a runtime decodes anything, it states a request's ``Cost`` from the image
headers alone: the pixels it will hold decoded (its images, and the images it makes)
and the samples it will queue for the model. The request is then answered at once
when it cannot be served:

- 413 when it never could: more pixels than the server's whole budget
  (``SERVE_MAX_PIXELS_IN_FLIGHT``), more samples than the model's queue, or more
  model time than its deadline even on an idle server;
- 503 with ``Retry-After`` when not now: the budget is held by requests in flight,
  the model's queue (samples queued and being decoded) is full, or the work ahead of
  it would carry it past its deadline.

An admitted request holds its pixels until its last thread is done with them
(``Hold``), its deadline runs from its arrival through decoding and the batch
queue, and its decoding takes one of its model's few lanes in the shared pool:
``SERVE_PREPROCESS_THREADS`` at once per model, in a pool with room for several
models, so that one model's large uploads hold another model's requests back by
at most the time the operating system gives a second thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses

from prometheus_client import Gauge

from service.errors import Overloaded, PayloadTooLarge

# Models whose decoding runs side by side before one waits for a pool thread.
MODELS_DECODING_AT_ONCE = 4


@dataclasses.dataclass(frozen=True)
class Cost:
    """What a request will take: decoded pixels held, and samples queued for the model."""

    pixels: int = 0
    samples: int = 1

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.pixels + other.pixels, self.samples + other.samples)


class PixelBudget:
    """The decoded pixels the server's requests may hold at once, shared by every model."""

    def __init__(self, limit: int, retry_after_s: int = 1, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._retry_after_s = retry_after_s
        self._gauge = gauge

    def take(self, pixels: int) -> Hold:
        if pixels > self.limit:
            raise PayloadTooLarge(
                f"the request needs {pixels} decoded pixels; the server holds at most "
                f"{self.limit} at once (max_pixels_in_flight)"
            )
        if self.held + pixels > self.limit:
            raise Overloaded(
                f"the server holds {self.held} of its {self.limit} decoded pixels for "
                "requests in flight; retry later",
                self._retry_after_s,
            )
        self._set(self.held + pixels)
        return Hold(self, pixels)

    def _set(self, value: int) -> None:
        self.held = value
        if self._gauge is not None:
            self._gauge.set(value)


class Hold:
    """A request's share of the budget, given back once the request is answered and no
    thread works for it any more (a decode can outlive a 504 by one image)."""

    def __init__(self, budget: PixelBudget, pixels: int) -> None:
        self._budget = budget
        self._pixels = pixels
        self._working = 0
        self._answered = False

    def working_on(self, future: concurrent.futures.Future) -> None:
        """Keep the pixels until ``future``, a pool thread's work for the request, is done
        (called on the event loop; the count changes there only)."""
        self._working += 1
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._done_working))

    def _done_working(self) -> None:
        self._working -= 1
        self._release_if_free()

    def answered(self) -> None:
        self._answered = True
        self._release_if_free()

    def _release_if_free(self) -> None:
        if self._answered and self._working == 0 and self._pixels:
            self._budget._set(self._budget.held - self._pixels)
            self._pixels = 0


@dataclasses.dataclass(frozen=True)
class Admission:
    """What every runtime of one server shares to admit and run its requests' CPU work."""

    pool: concurrent.futures.Executor
    budget: PixelBudget
    lanes_per_model: int = 1
    retry_after_s: int = 1

    @classmethod
    def create(
        cls,
        threads_per_model: int,
        max_pixels_in_flight: int,
        retry_after_s: int = 1,
        gauge: Gauge | None = None,
    ) -> Admission:
        pool = concurrent.futures.ThreadPoolExecutor(
            threads_per_model * MODELS_DECODING_AT_ONCE, thread_name_prefix="preprocess"
        )
        budget = PixelBudget(max_pixels_in_flight, retry_after_s, gauge)
        return cls(pool, budget, threads_per_model, retry_after_s)
