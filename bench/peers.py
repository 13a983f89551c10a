"""What every batching peer app (Triton, BentoML, LitServe, Ray Serve) shares: its command
line, Kerve's model call on the stacked samples of several requests, and the batch counts
it leaves in a file for the harness.

    python -m bench.<peer>_app VERSION_DIR --task classify --port P --max-batch-size 32 \
        --max-delay-ms 5 --engine onnxruntime --precision fp32 --stats-file F

Each runs in its own virtual environment (``make bench-peers``), with the engine that
Kerve's ``SERVE_ENGINE=auto`` chose for the model, so that only the serving differs.
Nothing heavy at import: a serving framework's supervisor process (BentoML's, LitServe's)
imports the app too, and should not load TensorFlow for nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bench import standalone

TASKS = ("classify", "segment", "caption", "denoise", "upscale", "generate")  # workloads.TASKS
ENGINE_CHOICES = ("auto", "keras", "onnxruntime", "openvino")
PRECISION_CHOICES = ("auto", "fp32", "bf16")


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--max-delay-ms", type=float, required=True)
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="keras")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto")
    parser.add_argument("--stats-file", type=Path, help="where to count the batches run")
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> standalone.Served:
    """The version, loaded as Kerve loads it, on the engine the command line names."""
    from bench import standalone

    return standalone.load(
        args.version_dir.resolve(),
        args.task,
        max_batch_size=args.max_batch_size,
        engine=args.engine,
        precision=args.precision,
        with_bodies=False,
    )


class BatchStats:
    """The batches a peer ran (samples, batches, seconds in the model), written to a JSON
    file after each one: a peer's serving processes differ, a file reaches them all."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.samples = self.batches = 0
        self.model_seconds = 0.0

    def record(self, samples: int, seconds: float) -> None:
        self.samples += samples
        self.batches += 1
        self.model_seconds += seconds
        if self.path is not None:
            partial = self.path.with_suffix(".partial")
            partial.write_text(json.dumps(self.totals()))
            os.replace(partial, self.path)  # never read half-written

    def totals(self) -> dict[str, float]:
        return {
            "samples": self.samples,
            "batches": self.batches,
            "model_seconds": self.model_seconds,
        }


def read_stats(path: Path) -> tuple[float, float, float]:
    """(samples, batches, seconds in the model) a peer has written; zeros before any."""
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0.0, 0.0, 0.0
    return stats["samples"], stats["batches"], stats["model_seconds"]


def predict_stacked(
    served: standalone.Served, stats: BatchStats, groups: list[np.ndarray]
) -> list[np.ndarray]:
    """Kerve's model call on the samples of several requests: stacked, padded up to the
    batch size Kerve pads to (each warmed up at load), run, and split back per request."""
    samples = np.concatenate(groups)
    count = len(samples)
    config = served.runtime.batching
    padded = np.zeros((config.padded_size(count), *samples.shape[1:]), samples.dtype)
    padded[:count] = samples
    started = time.perf_counter()
    outputs = served.runtime.predict_batch(padded)
    stats.record(count, time.perf_counter() - started)
    bounds = np.cumsum([len(group) for group in groups])[:-1]
    return np.split(outputs[:count], bounds)


class BatchServer:
    """A whole batch of bodies served at once, for the peers whose batch function gets the
    bodies themselves (Triton, BentoML): Kerve's preprocessing in as many threads as Kerve
    decodes in, one model call, Kerve's postprocessing."""

    def __init__(self, served: standalone.Served, stats: BatchStats, threads: int) -> None:
        self.served = served
        self.stats = stats
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, "preprocess")

    def results(self, bodies: list[bytes]) -> list[Any]:
        """The runtime's response (a pydantic model) for each body, in order."""
        requests = [self.served.workload.request(body) for body in bodies]
        prepared = list(self.pool.map(self.served.runtime.preprocess, requests))
        outputs = predict_stacked(self.served, self.stats, [p.samples for p in prepared])
        return [
            self.served.result(request, ready, output)
            for request, ready, output in zip(requests, prepared, outputs, strict=True)
        ]


def preprocess_threads() -> int:
    """How many threads Kerve decodes images in on this machine (its setting)."""
    from service.settings import Settings

    return Settings().preprocess_threads
