"""A model version outside the service, for the systems Kerve is measured against.

The raw loop and every peer (the naive app, Triton, BentoML, LitServe, Ray Serve) load a
version exactly as the service does (``service.repository.load_runtime``: same model, same
warm-up, an engine chosen the same way) and use its runtime's own preprocess,
predict_batch and postprocess, so that only the serving around the model differs.

    python -m bench.standalone VERSION_DIR --task classify --engine auto

prints, as one JSON line, the engine the service's ``SERVE_ENGINE=auto`` would choose.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

import kerve_manifest
from bench import peers
from bench.workloads import TASKS, Workload, workload
from service.batching import BatchConfig
from service.engines import EngineConfig
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

    def result(self, request, prepared, outputs: np.ndarray) -> Any:
        """The runtime's response (a pydantic model) for one request's outputs."""
        return self.runtime.postprocess(outputs, request, prepared.context)

    def finish(self, request, prepared, outputs: np.ndarray) -> bytes:
        return self.result(request, prepared, outputs).model_dump_json().encode()


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


def load(
    version_dir: Path,
    task: str,
    max_batch_size: int | None = None,
    engine: str = "keras",
    precision: str = "auto",
    with_bodies: bool = True,
) -> Served:
    """Load a version like the service would, with its manifest's batching, on ``engine``
    (``auto``: the service's own choice), exported engines cached where the service caches
    them. ``with_bodies=False``: the workload without its photos (a server needs none)."""
    manifest = kerve_manifest.read_manifest(version_dir)

    def batching(manifest: kerve_manifest.Manifest) -> BatchConfig:
        knobs = manifest.batching.model_dump()
        if max_batch_size is not None:
            knobs["max_batch_size"] = max_batch_size
        return BatchConfig(**knobs)

    settings = Settings()
    name, version = version_dir.parent.name, int(version_dir.name)
    runtime = load_runtime(
        version_dir,
        name,
        version,
        batching=batching,
        metrics=Metrics().for_model(name, version),
        max_image_pixels=settings.max_image_pixels,
        engine=EngineConfig(
            engine=engine,
            precision=precision,
            tolerance=settings.engine_tolerance,
            cache_dir=settings.engine_cache_dir,
        ),
    )
    return Served(runtime, workload(task, manifest, with_bodies=with_bodies))


def engine_of(runtime: Runtime) -> dict[str, str]:
    """Which engine and precision serve a loaded runtime, and why."""
    report = runtime.engine_report
    if report is None:
        return {"engine": "keras", "precision": "fp32", "reason": "no engine report"}
    return {"engine": report.engine, "precision": report.precision, "reason": report.reason}


def _task_models(models_dir: Path, manifest_task: str) -> list[str]:
    names = []
    for model_dir in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        versions = kerve_manifest.list_versions(model_dir)
        if versions:
            manifest = kerve_manifest.read_manifest(model_dir / str(max(versions)))
            if manifest.task == manifest_task:
                names.append(model_dir.name)
    return names


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description="the engine a version is served on")
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--engine", choices=peers.ENGINE_CHOICES, default="auto")
    parser.add_argument("--max-batch-size", type=int)
    args = parser.parse_args(argv)
    served = load(
        args.version_dir, args.task, args.max_batch_size, engine=args.engine, with_bodies=False
    )
    chosen = engine_of(served.runtime)
    print(json.dumps(chosen))
    return chosen


if __name__ == "__main__":
    main()
