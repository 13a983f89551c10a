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
import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import keras
import numpy as np
import pydantic
from PIL import Image

from kerve_manifest import BaseManifest, InputSpec
from service import imaging, tensors
from service.batching import BatchConfig, Batcher
from service.engines import Engine, EngineConfig, KerasEngine
from service.errors import BadRequest
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
        self._pool: concurrent.futures.Executor | None = None
        self._in_flight = 0
        self._preprocessing = 0  # requests the batcher can expect soon
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
        return await self._serve(self.preprocess, self.postprocess, request)

    async def infer_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Serve named input batches (the standard protocols), sharing batches with ``infer``."""
        return await self._serve(self._join_tensors, self._split_tensors, inputs)

    def _join_tensors(self, inputs: dict[str, np.ndarray]) -> Prepared:
        specs = self.tensor_inputs
        if len(specs) == 1 and specs[0].name in inputs and inputs[specs[0].name].dtype == object:
            return Prepared(self._encoded_images(inputs[specs[0].name]))
        samples = tensors.join(specs, inputs, structured=self._structured_samples)
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

    async def _serve(self, preprocess: Callable, postprocess: Callable, request: Any) -> Any:
        if self._batcher is None:
            raise RuntimeError("infer() before start()")
        self._in_flight += 1
        self._idle.clear()
        try:
            self._preprocessing += 1
            try:
                prepared = await self._in_pool(self.metrics.preprocess_time, preprocess, request)
            finally:
                self._preprocessing -= 1
            outputs = await self._batcher.submit(prepared.samples)
            return await self._in_pool(
                self.metrics.postprocess_time, postprocess, outputs, request, prepared.context
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
