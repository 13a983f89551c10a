"""What the benchmark sends for each task, and the runtime request each body stands for.

Every request carries one sample (one image, one tile, one generated image), so a
batch of N requests is a batch of N samples for every system measured, and Ray
Serve's ``@serve.batch`` (which counts calls) batches exactly what Kerve does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

from bench.loadgen import LoadResult, run_load
from kerve_manifest import Manifest
from loadtest import payloads
from service.runtimes.captioning import CaptionRequest
from service.runtimes.classification import ClassifyRequest
from service.runtimes.denoising import DenoiseRequest
from service.runtimes.generation import GenerateRequest
from service.runtimes.segmentation import SegmentRequest

PHOTO_SIZE = 224  # long side: a typical phone upload resized by the client
GENERATE_BODIES = 32
TOP_K = 5

TASKS = {  # the --task name: the manifest task it benchmarks
    "classify": "classification",
    "segment": "segmentation",
    "caption": "captioning",
    "denoise": "denoising",
    "generate": "generation",
}


@dataclasses.dataclass(frozen=True)
class Workload:
    task: str  # the --task name
    route: str  # Kerve's route below /v1/models/<name>/
    content_type: str
    bodies: tuple[bytes, ...]
    request: Callable[[bytes], Any]  # body -> the runtime's request (for the other systems)

    def drive(self, url: str, concurrency: int, seconds: float, warmup_s: float) -> LoadResult:
        """``concurrency`` closed-loop clients sending these bodies to ``url``."""
        headers = {"Content-Type": self.content_type}
        return run_load(url, list(self.bodies), headers, concurrency, seconds, warmup_s)


def workload(task: str, manifest: Manifest) -> Workload:
    """The requests for ``task`` against a model with ``manifest``."""
    if task == "generate":
        labels = len(manifest.labels)
        bodies = tuple(
            json.dumps({"label": i % labels, "count": 1, "seed": i}).encode()
            for i in range(GENERATE_BODIES)
        )
        return Workload(task, "generate", "application/json", bodies, _generate_request)
    if task == "denoise":
        # Photos the size of one tile's centre: one request is one sample.
        side = manifest.input.height - 2 * manifest.denoising.margin
        noisy = payloads.make_payloads(payloads.load_photos(), (side,), payloads.NOISE_SIGMA)
        return Workload(task, "denoise", "image/png", _bodies(noisy, "image/png"), DenoiseRequest)
    photos = payloads.make_payloads(payloads.load_photos(), (PHOTO_SIZE,))
    bodies = _bodies(photos, "image/jpeg")
    if task == "classify":
        top_k = min(TOP_K, len(manifest.labels))
        request = functools.partial(_classify_request, top_k=top_k)
        return Workload(task, f"classify?top_k={top_k}", "image/jpeg", bodies, request)
    if task == "segment":
        return Workload(task, "segment", "image/jpeg", bodies, SegmentRequest)
    if task == "caption":
        return Workload(task, "caption", "image/jpeg", bodies, lambda b: CaptionRequest([b]))
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")


def _bodies(photos: list[payloads.Payload], content_type: str) -> tuple[bytes, ...]:
    return tuple(p.body for p in photos if p.content_type == content_type)


def _classify_request(body: bytes, top_k: int) -> ClassifyRequest:
    return ClassifyRequest([body], top_k=top_k)


def _generate_request(body: bytes) -> GenerateRequest:
    return GenerateRequest(**json.loads(body))
