"""A model version outside the service, for the systems Kerve is measured against.

The raw loop, the naive app and Ray Serve load a version exactly as the service
does (``service.repository.load_runtime``: same model, same warm-up) and use its
runtime's own preprocess, predict_batch and postprocess, so that only the serving
around the model differs between them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import kerve_manifest
from bench.workloads import TASKS, Workload, workload
from service.batching import BatchConfig
from service.metrics import Metrics
from service.repository import load_runtime
from service.runtimes import Runtime
from service.settings import Settings

PREFERRED_MODELS = {"classify": "imagenet-classifier"}  # of the demo zoo's two classifiers


@dataclasses.dataclass(frozen=True)
class Served:
    runtime: Runtime
    workload: Workload

    def respond(self, body: bytes, outputs: np.ndarray | None = None) -> bytes:
        """One request served alone: preprocess, the model (unless ``outputs`` are
        given), postprocess, JSON."""
        request = self.workload.request(body)
        prepared = self.runtime.preprocess(request)
        if outputs is None:
            outputs = self.runtime.predict_batch(prepared.samples)
        return self.finish(request, prepared, outputs)

    def finish(self, request, prepared, outputs: np.ndarray) -> bytes:
        response = self.runtime.postprocess(outputs, request, prepared.context)
        return response.model_dump_json().encode()


def find_version(models_dir: Path, task: str, model: str | None = None) -> Path:
    """The newest version of ``model``, or of the task's demo model, in a repository."""
    names = [model] if model else _task_models(models_dir, TASKS[task].task)
    preferred = PREFERRED_MODELS.get(task)
    if preferred in names:
        names = [preferred]
    if not names:
        raise SystemExit(f"no {TASKS[task].task} model in {models_dir}; run `make models` first")
    model_dir = models_dir / names[0]
    versions = kerve_manifest.list_versions(model_dir)
    if not versions:
        raise SystemExit(f"{model_dir} has no published version")
    return model_dir / str(max(versions))


def load(version_dir: Path, task: str, max_batch_size: int | None = None) -> Served:
    """Load a version like the service would, with its manifest's batching."""
    manifest = kerve_manifest.read_manifest(version_dir)

    def batching(manifest: kerve_manifest.Manifest) -> BatchConfig:
        knobs = manifest.batching.model_dump()
        if max_batch_size is not None:
            knobs["max_batch_size"] = max_batch_size
        return BatchConfig(**knobs)

    name, version = version_dir.parent.name, int(version_dir.name)
    runtime = load_runtime(
        version_dir,
        name,
        version,
        batching=batching,
        metrics=Metrics().for_model(name, version),
        max_image_pixels=Settings().max_image_pixels,
    )
    return Served(runtime, workload(task, manifest))


def _task_models(models_dir: Path, manifest_task: str) -> list[str]:
    names = []
    for model_dir in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        versions = kerve_manifest.list_versions(model_dir)
        if versions:
            manifest = kerve_manifest.read_manifest(model_dir / str(max(versions)))
            if manifest.task == manifest_task:
                names.append(model_dir.name)
    return names
