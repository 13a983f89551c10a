"""Runtime: one loaded model version and the three steps that serve it.

A subclass turns a request into samples (``preprocess``, in the shared thread
pool), runs a batch of samples from many requests (``predict_batch``, on this
version's single inference thread, through the Batcher) and turns one request's
outputs into its result (``postprocess``, in the thread pool again). Results are
data (pydantic models); the routes decide how they travel.

A subclass also declares, once, what the HTTP layer derives its routes from: its
task, its verb (``/v1/<verb>``), its parameter and response models and what the
request body holds. Every runtime can also be driven as tensors in, tensors out
(``infer_tensors``), which is how the standard protocols reach it.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import concurrent.futures
import contextvars
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import keras
import numpy as np
import pydantic
from PIL import Image

from kerve_manifest import BaseManifest, InputSpec
from service import deadlines, imaging, tensors
from service.admission import Admission, Cost
from service.batching import BatchConfig, Batcher
from service.engines import Engine, EngineConfig, KerasEngine
from service.errors import BadRequest, DeadlineExceeded, Overloaded, PayloadTooLarge
from service.metrics import ModelMetrics
from service.runtimes import engine_choice


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A request's samples, and what postprocess needs to know about how they were made
    (the original image size, the tile grid, ...)."""

    samples: np.ndarray
    context: Any = None


class PngImage(pydantic.BaseModel):
    """An image in a JSON response: a PNG, base64-encoded only if JSON is what travels."""

    _png: bytes = pydantic.PrivateAttr(b"")

    @pydantic.computed_field(description="Base64 of a PNG file.")
    @property
    def b64(self) -> str:
        return base64.b64encode(self._png).decode("ascii")

    @property
    def png(self) -> bytes:
        return self._png

    @classmethod
    def of(cls, image: Image.Image, **fields: Any) -> PngImage:
        made = cls(**fields)
        made._png = imaging.encode_png(image)
        return made


@dataclasses.dataclass(frozen=True)
class PngBody:
    """The raw-PNG form of a result (``Accept: image/png``), and headers it travels with."""

    png: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class NoParams(pydantic.BaseModel):
    pass


class Agreement(NamedTuple):
    """Whether a compiled engine's outputs agree with Keras's, and the measure, in words."""

    agrees: bool
    detail: str


class Runtime(abc.ABC):
    task: ClassVar[str]  # the manifest's task this runtime serves
    # The task route, POST /v1/<verb> (and its per-model forms); None: protocols only.
    verb: ClassVar[str | None] = None
    summary: ClassVar[str] = ""  # what the task route does, for /docs
    Params: ClassVar[type[pydantic.BaseModel]] = NoParams  # query string, or JSON body
    body: ClassVar[Literal["images", "image", "params"]] = "images"  # what the body holds
    Response: ClassVar[type[pydantic.BaseModel] | None] = None
    # Whether the plain input tensor may also come as encoded images (v2 BYTES, TF b64).
    takes_encoded_images: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        version: int,
        model: keras.Model,
        manifest: BaseManifest,
        batching: BatchConfig,
        metrics: ModelMetrics,
        max_image_pixels: int,
        engine_config: EngineConfig | None = None,
        model_path: Path | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.model = model
        self.manifest = manifest
        self.batching = batching
        self.metrics = metrics
        self.max_image_pixels = max_image_pixels
        self.engine_config = engine_config or EngineConfig(engine="keras")
        self.model_path = model_path  # the .keras file a compiled engine is exported from
        self.engines: dict[str, Engine] = {
            part: KerasEngine(part_model) for part, part_model in self.compiled_parts().items()
        }
        self.engine_report: engine_choice.EngineReport | None = None  # set by warm_up
        self._inference_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"infer-{name}-{version}"
        )
        self.batch_seconds: dict[int, float] = {}  # model time per padded size, at warm-up
        self._batcher: Batcher | None = None
        self._admission: Admission | None = None
        self._lanes: asyncio.Semaphore | None = None  # this model's share of the decode pool
        self._in_flight = 0
        # Samples of admitted requests still being decoded: the batch queue's soon, and
        # what the batcher waits for instead of its full delay.
        self._admitted_samples = 0
        self._idle = asyncio.Event()
        self.tensor_inputs: list[tensors.TensorSpec] = []  # set by warm_up
        self.tensor_outputs: list[tensors.TensorSpec] = []
        self._structured_samples = False  # a field per input (several inputs), set by warm_up

    # -- what a task implements ------------------------------------------------
    @classmethod  # noqa: B027 - a hook: most tasks check their model
    def validate(cls, model: keras.Model, manifest: BaseManifest) -> None:
        """Refuse, at load, a model this task cannot serve as its manifest says (ValueError).
        ``kerve publish`` calls it too, before anything is written."""

    @classmethod
    def make_request(cls, params: pydantic.BaseModel, images: list[bytes]) -> Any:
        """The request ``preprocess`` takes, from the route's parameters and images."""
        return params

    @classmethod
    def images_asked(cls, params: pydantic.BaseModel) -> int:
        """Images a request without image uploads asks to be made (held to the server's limit)."""
        return 0

    def cost(self, request: Any) -> Cost:
        """What ``request`` will take (service/admission.py), from image headers alone: it
        refuses what decoding would (400, 413, 415) before anything is decoded. By default
        one sample and no pixels."""
        return Cost()

    def sample_images_cost(self, images: list[bytes] | np.ndarray) -> Cost:
        """Images made into samples of the manifest's input (``imaging.load_sample``): the
        pixels each decodes to (a large JPEG at a reduced scale), one sample each."""
        spec = self.manifest.input
        target = (spec.width, spec.height)
        sizes = [imaging.decoded_size(data, self.max_image_pixels, target) for data in images]
        return Cost(sum(width * height for width, height, _ in sizes), len(images))

    def tensors_cost(self, inputs: dict[str, np.ndarray]) -> Cost:
        """What named input batches (the standard protocols) will take: their rows, or the
        images of an encoded-images tensor."""
        images = self._encoded_input(inputs)
        if images is not None and self.takes_encoded_images:
            if images.ndim == 1 and all(isinstance(data, bytes) for data in images):
                return self.encoded_images_cost(images)
            return Cost()  # refused with its reason when joined
        rows = [len(array) for array in inputs.values() if np.ndim(array)]
        return Cost(0, max(rows, default=1))

    def encoded_images_cost(self, images: np.ndarray) -> Cost:
        return self.sample_images_cost(images)

    def check_samples(self, samples: np.ndarray) -> None:  # noqa: B027 - a hook
        """Refuse (BadRequest) samples sent as tensors that ``predict_batch`` cannot take."""

    @abc.abstractmethod
    def preprocess(self, request: Any) -> Prepared:
        """Validate a request and turn it into samples shaped like ``sample_shape``."""

    def predict_batch(self, samples: np.ndarray) -> np.ndarray:
        """Run the model on a batch of samples; one output row per sample."""
        return np.asarray(self.engine.predict(samples))

    def compiled_parts(self) -> dict[str, keras.Model]:
        """The models ``predict_batch`` calls, by name (a sub-model's layer name, or "model"
        for the whole): each gets an engine of its own, all of one kind."""
        return {"model": self.model}

    @property
    def engine(self) -> Engine:
        return self.engines["model"]

    def agreement(self, reference: Any, candidate: Any, tolerance: float) -> Agreement:
        """Whether ``predict_batch`` outputs of a compiled engine (``candidate``) agree with
        Keras's (``reference``) closely enough for this task; ``tolerance`` scales the
        limit (0: identical). By default, the relative error of every output."""
        error = relative_error(reference, candidate)
        limit = 1e-3 * tolerance
        return Agreement(error <= limit, f"relative error {error:.2g} (at most {limit:.2g})")

    def probe_samples(self, size: int) -> np.ndarray:
        """Random samples that compiled engines must agree with Keras on: random pixels for
        image-shaped samples, normal noise for other numbers, zeros for integers."""
        rng = np.random.default_rng(0)
        samples = self.blank_samples(size)
        spec = getattr(self.manifest, "input", None)
        for name in samples.dtype.names or (None,):
            column = samples if name is None else samples[name]
            if column.dtype == np.uint8:
                column[...] = rng.integers(0, 256, column.shape)
            elif (
                column.dtype.kind == "f"
                and isinstance(spec, InputSpec)
                and (column.shape[1:] == self.sample_shape)
            ):
                pixels = rng.integers(0, 256, column.shape).astype(np.float32)
                column[...] = (pixels - np.float32(spec.mean)) / np.float32(spec.std)
            elif column.dtype.kind == "f":
                column[...] = rng.standard_normal(column.shape)
        return samples

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

    @property
    def input_name(self) -> str:
        """The name of a plain (unstructured) sample tensor: the model's input layer's."""
        return layer_name(self.model.inputs[0])

    @property
    def output_name(self) -> str:
        return layer_name(self.model.outputs[0]) if len(self.model.outputs) == 1 else "output"

    # -- lifecycle, driven by the repository -----------------------------------
    def warm_up(self) -> None:
        """Warm up and time every padded batch size on Keras, then choose the engine that
        serves (``engine_choice``), on the inference thread, as requests will run."""
        try:
            self._inference_thread.submit(self._warm_up).result()
        except BaseException:
            self._inference_thread.shutdown(wait=False)
            raise

    def _warm_up(self) -> None:
        self.batch_seconds = self.time_batches()
        self.engine_report = engine_choice.choose(self, self.engine_config, self.model_path)

    def time_batches(self) -> dict[int, float]:
        """Run every padded batch size, so that no request pays a trace or compile, and
        time a second run of each: the Batcher weighs padding against splitting with it."""
        seconds = {}
        for size in self.batching.batch_sizes:
            samples = self.blank_samples(size)
            outputs = self.predict_batch(samples)
            if len(outputs) != size:
                raise ValueError(f"the model returned {len(outputs)} outputs for {size} samples")
            if not self.tensor_outputs:
                self._structured_samples = bool(samples.dtype.names)
                self.tensor_inputs = tensors.specs_of(samples, self.input_name)
                self.tensor_outputs = tensors.specs_of(outputs, self.output_name)
            seconds[size] = _timed(self.predict_batch, samples)
        return seconds

    def start(self, admission: Admission) -> None:
        """Begin serving (called on the event loop once loaded and warmed up)."""
        self._admission = admission
        self._lanes = asyncio.Semaphore(admission.lanes_per_model)
        self._idle.set()
        self._batcher = Batcher(
            self.predict_batch,
            self.batching,
            self._inference_thread,
            self.metrics,
            admission.retry_after_s,
            arriving=lambda: self._admitted_samples,
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
        return await self._serve(self.preprocess, self.postprocess, request, self.cost)

    async def infer_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Serve named input batches (the standard protocols), sharing batches with ``infer``."""
        return await self._serve(self._join_tensors, self._split_tensors, inputs, self.tensors_cost)

    def _encoded_input(self, inputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """The single input's tensor when it holds encoded images (BYTES), else None."""
        specs = self.tensor_inputs
        if len(specs) == 1 and specs[0].name in inputs and inputs[specs[0].name].dtype == object:
            return inputs[specs[0].name]
        return None

    def _join_tensors(self, inputs: dict[str, np.ndarray]) -> Prepared:
        images = self._encoded_input(inputs)
        if images is not None:
            return Prepared(self._encoded_images(images))
        samples = tensors.join(self.tensor_inputs, inputs, structured=self._structured_samples)
        self.check_samples(samples)
        return Prepared(samples)

    def _encoded_images(self, images: np.ndarray) -> np.ndarray:
        if not self.takes_encoded_images:
            raise BadRequest(f"model {self.name!r} takes numbers, not encoded images")
        if images.ndim != 1 or not len(images):
            raise BadRequest("encoded images come as a list of one or more, one per sample")
        spec = self.manifest.input
        return np.stack([imaging.load_sample(d, spec, self.max_image_pixels) for d in images])

    def _split_tensors(self, outputs: np.ndarray, inputs: Any, context: Any) -> dict:
        return tensors.split(self.tensor_outputs, outputs)

    async def _serve(
        self, preprocess: Callable, postprocess: Callable, request: Any, cost_of: Callable
    ) -> Any:
        """Admit (service/admission.py), then preprocess in one of this model's lanes of the
        shared pool, batched predict and postprocess, all within the request's deadline."""
        if self._batcher is None or self._admission is None:
            raise RuntimeError("infer() before start()")
        deadline = deadlines.start(self.batching.timeout_ms)
        # Whether even the least request (a sample, no pixels) would be refused, before its
        # images' headers are read: under overload most requests end here, and cheaply.
        self._admit(Cost(), deadline)
        cost = cost_of(request)
        self._admit(cost, deadline)
        hold = self._admission.budget.take(cost.pixels)
        self._in_flight += 1
        self._idle.clear()
        try:
            self._admitted_samples += cost.samples
            try:
                prepared = await self._decode(preprocess, request, hold, deadline)
            finally:
                self._admitted_samples -= cost.samples
            outputs = await self._batcher.submit(prepared.samples, deadline)
            return await self._in_pool(
                self.metrics.postprocess_time, hold, postprocess, outputs, request, prepared.context
            )
        finally:
            hold.answered()
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def _admit(self, cost: Cost, deadline: float) -> None:
        """Refuse at once what this model cannot serve by ``deadline``: 413 if it never
        could, 503 if not now (its queue is full, or the work ahead would make it late)."""
        config, retry_after_s = self.batching, self._admission.retry_after_s
        if cost.samples > config.max_queue:
            raise PayloadTooLarge(
                f"the request is {cost.samples} samples for model {self.name!r}, "
                f"which queues at most {config.max_queue}"
            )
        ahead = self._batcher.queued_samples + self._admitted_samples
        if ahead + cost.samples > config.max_queue:
            self.metrics.rejected.inc()
            raise Overloaded("the model's queue is full; retry later", retry_after_s)
        if deadlines.remaining(deadline) <= 0:  # reading the body took it all
            self.metrics.timeouts.inc()
            raise DeadlineExceeded(
                f"the request's {config.timeout_ms:g} ms deadline passed while it was read"
            )
        per_sample_s = self.seconds_per_sample
        alone_s = cost.samples * per_sample_s
        if alone_s > config.timeout_ms / 1000:
            raise PayloadTooLarge(
                f"the request is {cost.samples} samples, about {alone_s:.1f} s of model "
                f"{self.name!r}'s time; its deadline is {config.timeout_ms / 1000:g} s"
            )
        # The work ahead at the pace full batches run now (slower than at load, when
        # decoding shares the CPU), not less than that.
        pace_s = max(self._batcher.full_batch_seconds / config.max_batch_size, per_sample_s)
        if (ahead + cost.samples) * pace_s > deadlines.remaining(deadline):
            self.metrics.rejected.inc()
            raise Overloaded(
                "the work queued ahead would carry the request past its deadline; retry later",
                retry_after_s,
            )

    @property
    def seconds_per_sample(self) -> float:
        """The model's time per sample in a full batch, as timed at load (0 if not timed)."""
        size = self.batching.max_batch_size
        return self.batch_seconds.get(size, 0.0) / size

    async def _decode(self, preprocess: Callable, request: Any, hold, deadline: float) -> Prepared:
        """``preprocess`` in one of this model's lanes, given up (504) at the deadline: the
        lane and the pixels stay taken until the thread is done with them."""
        if not self._lanes.locked():
            await self._lanes.acquire()  # at once: no timer needed
        else:
            try:
                await asyncio.wait_for(self._lanes.acquire(), deadlines.remaining(deadline))
            except TimeoutError:
                self.metrics.timeouts.inc()
                raise DeadlineExceeded("no decoding thread was free before the deadline") from None
        try:
            work = self._in_pool(self.metrics.preprocess_time, hold, preprocess, request)
            running = asyncio.ensure_future(work)
        except BaseException:
            self._lanes.release()
            raise
        running.add_done_callback(self._leave_lane)
        try:
            return await asyncio.wait_for(asyncio.shield(running), deadlines.remaining(deadline))
        except TimeoutError:
            self.metrics.timeouts.inc()
            raise DeadlineExceeded(
                f"the request was still being decoded at its "
                f"{self.batching.timeout_ms:g} ms deadline"
            ) from None

    def _leave_lane(self, running: asyncio.Future) -> None:
        self._lanes.release()
        if not running.cancelled():
            running.exception()  # retrieved: a decode given up at its deadline may fail later

    async def _in_pool(self, histogram, hold, function: Callable, *args: Any) -> Any:
        """``function`` on the shared pool, in a copy of the request's context (its id and
        deadline), holding the request's pixels until it returns."""
        started = time.perf_counter()
        context = contextvars.copy_context()
        future = self._admission.pool.submit(context.run, function, *args)
        hold.working_on(future)
        try:
            return await asyncio.wrap_future(future)
        finally:
            histogram.observe(time.perf_counter() - started)


def _timed(function: Callable, *args: Any, budget_s: float = 1.0, runs: int = 3) -> float:
    """The fastest of up to ``runs`` calls, fewer once ``budget_s`` is spent: one run on a
    shared machine can be twice its usual time, and engines are chosen by these."""
    best, spent = float("inf"), 0.0
    for _ in range(runs):
        started = time.perf_counter()
        function(*args)
        elapsed = time.perf_counter() - started
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    return best


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The largest, over a structured array's fields, of |candidate - reference| / |reference|
    (Euclidean norms); fields that are not floats must be equal (else 1.0)."""
    errors = []
    for name in reference.dtype.names or (None,):
        want = reference if name is None else reference[name]
        got = candidate if name is None else candidate[name]
        if want.dtype.kind not in "fiu":
            errors.append(0.0 if np.array_equal(want, got) else 1.0)
            continue
        want, got = want.astype(np.float64), got.astype(np.float64)
        scale = max(float(np.linalg.norm(want)), 1e-12)
        errors.append(float(np.linalg.norm(got - want)) / scale)
    return max(errors)


def layer_name(tensor: keras.KerasTensor) -> str:
    """The name of the layer that makes a model's input or output tensor."""
    return tensor._keras_history.operation.name


def forward_blank(model: keras.Model, manifest) -> np.ndarray:
    """The model's output for one blank image of the manifest's input shape (for validate)."""
    spec = manifest.input
    outputs = model.predict_on_batch(np.zeros((1, spec.height, spec.width, spec.channels)))
    if isinstance(outputs, dict | list | tuple):
        raise ValueError(f"the model has {len(outputs)} outputs; this task needs one")
    return np.asarray(outputs)
