"""What the benchmark sends for each task, and the runtime request each body stands for.

Every request carries one sample (one image, one tile, one generated image), so a
batch of N requests is a batch of N samples for every system measured, and Ray
Serve's ``@serve.batch`` (which counts calls) batches exactly what Kerve does.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx

from bench import carriers
from bench.loadgen import LoadResult, run_load
from kerve_manifest import BaseManifest
from loadtest import payloads
from service.runtimes import RUNTIMES, Runtime
from service.runtimes.tiled import TiledImageRuntime

PHOTO_SIZE = 224  # long side: a typical phone upload resized by the client
GENERATE_BODIES = 32
TOP_K = 5

# The --task name (a task route's verb): the runtime it benchmarks, from the registry.
TASKS: dict[str, type[Runtime]] = {r.verb: r for r in RUNTIMES.values() if r.verb is not None}


@dataclasses.dataclass(frozen=True)
class Workload:
    task: str  # the --task name
    query: str  # the query string Kerve's task route gets, "" or "?top_k=5"
    content_type: str
    bodies: tuple[bytes, ...]
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # the route's parameters

    def request(self, body: bytes) -> Any:
        """The runtime's request a body stands for (for the systems other than Kerve)."""
        runtime = TASKS[self.task]
        if runtime.body == "params":
            return runtime.make_request(runtime.Params.model_validate_json(body), [])
        return runtime.make_request(runtime.Params(**self.params), [body])

    def drive(
        self,
        url: str,
        concurrency: int,
        seconds: float,
        warmup_s: float,
        carrier: str = carriers.UPLOAD,
    ) -> LoadResult:
        """``concurrency`` closed-loop clients sending these bodies to ``url``, each in the
        ``carrier`` its system receives them in (``bench.carriers``)."""
        wire = carriers.carry(carrier, self.content_type, self.bodies)
        return run_load(url, list(wire.bodies), wire.headers, concurrency, seconds, warmup_s)


def workload(task: str, manifest: BaseManifest, with_bodies: bool = True) -> Workload:
    """The requests for ``task`` against a model with ``manifest`` (``with_bodies=False``:
    none, for a server, which only turns the bodies it is sent into requests)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if task == "generate":
        shape = Workload(task, "", "application/json", ())
    elif issubclass(TASKS[task], TiledImageRuntime):  # denoise, upscale
        shape = Workload(task, "", "image/png", ())
    elif task == "classify":
        top_k = min(TOP_K, len(manifest.labels))
        shape = Workload(task, f"?top_k={top_k}", "image/jpeg", (), {"top_k": top_k})
    else:
        shape = Workload(task, "", "image/jpeg", ())
    if not with_bodies:
        return shape
    return dataclasses.replace(shape, bodies=_task_bodies(task, manifest))


def _task_bodies(task: str, manifest: BaseManifest) -> tuple[bytes, ...]:
    if task == "generate":
        labels = len(manifest.labels)
        return tuple(
            json.dumps({"label": i % labels, "count": 1, "seed": i}).encode()
            for i in range(GENERATE_BODIES)
        )
    if issubclass(TASKS[task], TiledImageRuntime):
        # Photos the size of one tile's centre: one request is one sample. A denoiser's
        # are noisy; an upscaler's are small photos, clean.
        margin, _ = TASKS[task].tiling_of(manifest)
        side = min(manifest.input.height, manifest.input.width) - 2 * margin
        noise = payloads.NOISE_SIGMA if task == "denoise" else None
        return _bodies(payloads.make_payloads(payloads.load_photos(), (side,), noise), "image/png")
    return photo_jpegs()


def photo_jpegs() -> tuple[bytes, ...]:
    """The bundled photos as JPEGs of PHOTO_SIZE: what the classify workloads send."""
    return _bodies(payloads.make_payloads(payloads.load_photos(), (PHOTO_SIZE,)), "image/jpeg")


def model_listing(base_url: str, name: str) -> dict:
    """GET /v1/models/{name}: the model's versions, their batching and its endpoints."""
    return httpx.get(f"{base_url}/v1/models/{name}", timeout=30).raise_for_status().json()


def task_path(base_url: str, name: str) -> str:
    """The path of model ``name``'s task route, as the server lists it."""
    return model_listing(base_url, name)["endpoints"]["task"]


def _bodies(photos: list[payloads.Payload], content_type: str) -> tuple[bytes, ...]:
    return tuple(p.body for p in photos if p.content_type == content_type)
