"""Runtime: one loaded model version and the three steps that serve it.

A subclass turns a request into samples (``preprocess``, in the shared thread
pool), runs a batch of samples from many requests (``predict_batch``, on this
version's single inference thread, through the Batcher) and turns one request's
outputs into its response (``postprocess``, in the thread pool again).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import concurrent.futures
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, ClassVar

import keras
import numpy as np
import pydantic
from PIL import Image

from kerve_manifest import Manifest
from service import imaging
from service.batching import BatchConfig, Batcher
from service.metrics import ModelMetrics


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A request's samples, and what postprocess needs to know about how they were made
    (the original image size, the tile grid, ...)."""

    samples: np.ndarray
    context: Any = None


class PngImage(pydantic.BaseModel):
    """An image in a JSON response."""

    b64: str = pydantic.Field(description="Base64 of a PNG file.")

    @classmethod
    def of(cls, image: Image.Image) -> PngImage:
        return cls(b64=base64.b64encode(imaging.encode_png(image)).decode("ascii"))


class Runtime(abc.ABC):
    task: ClassVar[str]

    def __init__(
        self,
        name: str,
        version: int,
        model: keras.Model,
        manifest: Manifest,
        batching: BatchConfig,
        metrics: ModelMetrics,
        max_image_pixels: int,
    ) -> None:
        self.name = name
        self.version = version
        self.model = model
        self.manifest = manifest
        self.batching = batching
        self.metrics = metrics
        self.max_image_pixels = max_image_pixels
        self._inference_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"infer-{name}-{version}"
        )
        self.batch_seconds: dict[int, float] = {}  # model time per padded size, at warm-up
        self._batcher: Batcher | None = None
        self._pool: concurrent.futures.Executor | None = None
        self._in_flight = 0
        self._preprocessing = 0  # requests the batcher can expect soon
        self._idle = asyncio.Event()

    # -- what a task implements ------------------------------------------------
    @abc.abstractmethod
    def preprocess(self, request: Any) -> Prepared:
        """Validate a request and turn it into samples shaped like ``sample_shape``."""

    def predict_batch(self, samples: np.ndarray) -> np.ndarray:
        """Run the model on a batch of samples; one output row per sample."""
        return np.asarray(self.model.predict_on_batch(samples))

    @abc.abstractmethod
    def postprocess(self, outputs: np.ndarray, request: Any, context: Any) -> Any:
        """Turn one request's outputs into its response (``context`` from preprocess)."""

    @property
    def sample_shape(self) -> tuple[int, ...]:
        spec = self.manifest.input
        return (spec.height, spec.width, spec.channels)

    def blank_samples(self, size: int) -> np.ndarray:
        """``size`` samples that warm_up runs through ``predict_batch``."""
        return np.zeros((size, *self.sample_shape), np.float32)

    # -- lifecycle, driven by the repository -----------------------------------
    def check_outputs(self, outputs: np.ndarray, batch_size: int) -> None:
        """Refuse, at load, a model whose outputs postprocess could not read."""
        if len(outputs) != batch_size:
            raise ValueError(f"the model returned {len(outputs)} outputs for {batch_size} samples")

    def warm_up(self) -> None:
        """Run every padded batch size, so that no request pays a trace or compile, and
        time a second run of each: the Batcher weighs padding against splitting with it."""
        try:
            for size in self.batching.batch_sizes:
                samples = self.blank_samples(size)
                outputs = self._inference_thread.submit(self.predict_batch, samples).result()
                self.check_outputs(outputs, size)
                self.batch_seconds[size] = self._inference_thread.submit(
                    _timed, self.predict_batch, samples
                ).result()
        except BaseException:
            self._inference_thread.shutdown(wait=False)
            raise

    def start(self, pool: concurrent.futures.Executor, retry_after_s: int) -> None:
        """Begin serving (called on the event loop once loaded and warmed up)."""
        self._pool = pool
        self._idle.set()
        self._batcher = Batcher(
            self.predict_batch,
            self.batching,
            self._inference_thread,
            self.metrics,
            retry_after_s,
            arriving=lambda: self._preprocessing,
            batch_seconds=self.batch_seconds,
        )
        self._batcher.start()
        self.metrics.loaded.set(1)

    async def stop(self) -> None:
        """Let requests in flight finish, then release the model's thread."""
        await self._idle.wait()
        if self._batcher is not None:
            await self._batcher.close()
        self._inference_thread.shutdown(wait=True)
        self.metrics.loaded.set(0)

    # -- serving ---------------------------------------------------------------
    async def infer(self, request: Any) -> Any:
        """Serve one request: preprocess, batched predict, postprocess."""
        if self._batcher is None:
            raise RuntimeError("infer() before start()")
        self._in_flight += 1
        self._idle.clear()
        try:
            self._preprocessing += 1
            try:
                prepared = await self._in_pool(
                    self.metrics.preprocess_time, self.preprocess, request
                )
            finally:
                self._preprocessing -= 1
            outputs = await self._batcher.submit(prepared.samples)
            return await self._in_pool(
                self.metrics.postprocess_time, self.postprocess, outputs, request, prepared.context
            )
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _in_pool(self, histogram, function: Callable, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(function, *args))
        finally:
            histogram.observe(time.perf_counter() - started)


def _timed(function: Callable, *args: Any) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started
