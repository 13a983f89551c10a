"""Batcher: the asyncio micro-batcher that stacks samples from many requests.

Requests queue their samples; one loop per model version takes up to
``max_batch_size`` samples at a time (splitting a large request across batches),
waiting at most ``max_delay_ms`` for more, and not at all when none are on their way,
pads the batch to an allowed size that was warmed up at load, runs the model on
its single inference thread and hands each request its slice of the outputs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from service import deadlines
from service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
)
from service.metrics import ModelMetrics

logger = logging.getLogger(__name__)
FULL_BATCH_SMOOTHING = 0.2  # weight of the newest full batch's time in the moving average


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 512
    timeout_ms: float = 10_000.0

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """Sizes a batch is padded up to: powers of two below the maximum, and it."""
        sizes = [1]
        while sizes[-1] * 2 < self.max_batch_size:
            sizes.append(sizes[-1] * 2)
        if sizes[-1] != self.max_batch_size:
            sizes.append(self.max_batch_size)
        return tuple(sizes)

    def padded_size(self, num_samples: int) -> int:
        return next(size for size in self.batch_sizes if size >= num_samples)


@dataclasses.dataclass(eq=False)
class _Request:
    samples: np.ndarray
    future: asyncio.Future
    enqueued_at: float
    pending: int  # samples not yet handed to a batch
    received: int = 0
    chunks: list[np.ndarray] = dataclasses.field(default_factory=list)
    started: bool = False


@dataclasses.dataclass(frozen=True)
class _Slice:
    request: _Request
    start: int
    stop: int


class Batcher:
    """Batches samples for one model version; see the module docstring."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        config: BatchConfig,
        executor: Executor,
        metrics: ModelMetrics | None = None,
        retry_after_s: int = 1,
        arriving: Callable[[], int] | None = None,
        batch_seconds: dict[int, float] | None = None,
    ) -> None:
        """``arriving`` counts what is on its way to ``submit`` (samples being
        decoded); with it, a batch waits for them only, not for the full delay.
        ``batch_seconds`` is the model's time per allowed batch size; with it, a batch
        that would be padded may leave its last samples to the next batch instead."""
        self.config = config
        self._arriving = arriving
        self._batch_seconds = batch_seconds or {}
        self._predict = predict
        self._executor = executor
        self._metrics = metrics
        self._retry_after_s = retry_after_s
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued = 0  # samples waiting, cancelled requests excluded
        self._arrival = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        # The model's time for a full batch as it runs now (CPU shared with decoding, say),
        # a moving average: what admission expects the samples queued ahead to take.
        self.full_batch_seconds = self._batch_seconds.get(config.max_batch_size, 0.0)

    @property
    def queued_samples(self) -> int:
        return self._queued

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Finish every queued request, then stop the loop."""
        self._closing = True
        self._arrival.set()
        if self._task is not None:
            await self._task

    async def submit(self, samples: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Queue ``samples`` and wait for the model's outputs for them, in order, until
        ``deadline`` (time.monotonic(); by default ``timeout_ms`` from now)."""
        num_samples = len(samples)
        if num_samples == 0:
            raise ValueError("submit() needs at least one sample")
        if self._closing:
            raise Unavailable("this model version is unloading", self._retry_after_s)
        if num_samples > self.config.max_queue:
            raise PayloadTooLarge(
                f"the request has {num_samples} samples; this model queues at most "
                f"{self.config.max_queue}"
            )
        if self._queued + num_samples > self.config.max_queue:
            if self._metrics:
                self._metrics.rejected.inc()
            raise Overloaded("the model's queue is full; retry later", self._retry_after_s)
        loop = asyncio.get_running_loop()
        request = _Request(samples, loop.create_future(), loop.time(), pending=num_samples)
        request.future.add_done_callback(lambda _: self._forget(request))
        self._queue.append(request)
        self._set_queued(self._queued + num_samples)
        self._arrival.set()
        timeout_s = (
            self.config.timeout_ms / 1000 if deadline is None else deadlines.remaining(deadline)
        )
        try:
            return await asyncio.wait_for(request.future, timeout_s)
        except TimeoutError:
            if self._metrics:
                self._metrics.timeouts.inc()
            raise DeadlineExceeded(
                f"no result within the {self.config.timeout_ms:g} ms deadline"
            ) from None

    def _forget(self, request: _Request) -> None:
        """A finished request (answered, failed, cancelled, timed out) leaves the queue count."""
        self._set_queued(self._queued - request.pending)
        request.pending = 0

    def _set_queued(self, value: int) -> None:
        self._queued = value
        if self._metrics:
            self._metrics.queue_depth.set(value)

    async def _run(self) -> None:
        while await self._wait_for_batch():
            batch = self._take_batch()
            if batch:
                await self._execute(batch)

    async def _wait_for_batch(self) -> bool:
        """Wait until a batch is full or its oldest sample is due; False once closed and empty."""
        loop = asyncio.get_running_loop()
        while self._queued == 0:
            if self._closing:
                return False
            self._arrival.clear()
            await self._arrival.wait()
        due = self._oldest_enqueued_at() + self.config.max_delay_ms / 1000
        while self._queued < self.config.max_batch_size and not self._closing:
            if self._arriving is not None and self._arriving() == 0:
                break  # nothing else is on its way: waiting would only add latency
            remaining = due - loop.time()
            if remaining <= 0:
                break
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                break
        return True

    def _oldest_enqueued_at(self) -> float:
        waiting = (r.enqueued_at for r in self._queue if r.pending and not r.future.done())
        return next(waiting, asyncio.get_running_loop().time())

    def batch_limit(self, waiting: int) -> int:
        """How many of ``waiting`` samples the next batch takes.

        All of them (up to the maximum), padded up to an allowed size; unless the
        model's times per size, measured at load, say a smaller allowed size costs less
        per sample: on a CPU time grows with the padded size (9 samples padded to 16
        cost as much as 16), and a compiled engine can run small batches faster per
        sample than large ones (OpenVINO here: 11 ms a sample alone, 17 in 32). Of the
        sizes within 10% of the cheapest per sample, the largest: fewer, fuller calls.
        """
        wanted = min(waiting, self.config.max_batch_size)
        padded = self.config.padded_size(wanted)
        sizes = [size for size in self.config.batch_sizes if size <= padded]
        seconds = self._batch_seconds
        if len(sizes) == 1 or not all(size in seconds for size in sizes):
            return wanted
        per_sample = {size: seconds[size] / min(size, wanted) for size in sizes}
        cheapest = min(per_sample.values())
        best = max(size for size in sizes if per_sample[size] <= 1.1 * cheapest)
        return min(best, wanted)

    def _take_batch(self) -> list[_Slice]:
        batch: list[_Slice] = []
        size = 0
        limit = self.batch_limit(self._queued)
        now = asyncio.get_running_loop().time()
        while self._queue and size < limit:
            request = self._queue[0]
            if request.pending == 0 or request.future.done():
                self._queue.popleft()  # answered or abandoned (cancelled, timed out)
                continue
            count = min(request.pending, limit - size)
            start = len(request.samples) - request.pending
            batch.append(_Slice(request, start, start + count))
            request.pending -= count
            size += count
            if not request.started:
                request.started = True
                if self._metrics:
                    self._metrics.queue_wait.observe(now - request.enqueued_at)
        self._set_queued(self._queued - size)
        return batch

    async def _execute(self, batch: list[_Slice]) -> None:
        num_samples = sum(item.stop - item.start for item in batch)
        samples = self._assemble(batch, num_samples)
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self._call_model, samples)
        except Exception as error:  # noqa: BLE001 - a failed batch fails only its requests
            if len({id(item.request) for item in batch}) > 1:
                # Samples sent as raw tensors can make a model raise: run each request's
                # samples alone, so that only the one that fails gets the error.
                for item in batch:
                    if not item.request.future.done():  # its client may have gone meanwhile
                        await self._execute([item])
                return
            logger.exception("inference failed for a batch of %d samples", num_samples)
            failure = InferenceFailed(f"inference failed: {type(error).__name__}")
            for item in batch:
                if not item.request.future.done():
                    item.request.future.set_exception(failure)
            return
        if self._metrics:
            self._metrics.batch_size.observe(num_samples)
        offset = 0
        for item in batch:
            count = item.stop - item.start
            self._deliver(item.request, outputs[offset : offset + count])
            offset += count

    def _assemble(self, batch: list[_Slice], num_samples: int) -> np.ndarray:
        """The batch as one array padded to an allowed size, copying each sample once."""
        padded = self.config.padded_size(num_samples)
        first = batch[0].request.samples
        if len(batch) == 1 and num_samples == padded:
            return first[batch[0].start : batch[0].stop]
        samples = np.empty((padded, *first.shape[1:]), first.dtype)
        offset = 0
        for item in batch:
            count = item.stop - item.start
            samples[offset : offset + count] = item.request.samples[item.start : item.stop]
            offset += count
        samples[offset:] = 0
        return samples

    def _call_model(self, samples: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        outputs = self._predict(samples)
        elapsed = time.perf_counter() - started
        if len(samples) == self.config.max_batch_size:  # a float's store is atomic
            self.full_batch_seconds += FULL_BATCH_SMOOTHING * (elapsed - self.full_batch_seconds)
        if self._metrics:
            self._metrics.inference_time.observe(elapsed)
        if not isinstance(outputs, np.ndarray) or len(outputs) != len(samples):
            length = len(outputs) if hasattr(outputs, "__len__") else "no"
            raise ValueError(f"the model returned {length} outputs for {len(samples)} samples")
        return outputs

    @staticmethod
    def _deliver(request: _Request, outputs: np.ndarray) -> None:
        if request.future.done():
            return  # the client left or timed out while its batch ran
        request.chunks.append(outputs)
        request.received += len(outputs)
        if request.received == len(request.samples):
            # A finished request can wait in the queue for the next batch: drop its chunks now.
            chunks, request.chunks = request.chunks, []
            request.future.set_result(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))
