"""Measure one task on every system: the raw model, Kerve with and without batching,
a naive FastAPI app and Ray Serve, under closed-loop load at several concurrencies.

Each server runs alone (the others are stopped), serving only the benchmarked model,
and gets every concurrency in turn; the raw model runs in its own process first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

import kerve_manifest
from bench.server import ROOT, running_process, running_service, tree_cpu_seconds, tree_rss_bytes
from bench.workloads import Workload, task_path, workload

SYSTEMS = {  # name: how the tables call it
    "raw": "raw model (no server)",
    "kerve": "Kerve",
    "kerve-unbatched": "Kerve, batching off",
    "naive": "naive FastAPI",
    "ray": "Ray Serve",
}


@dataclasses.dataclass(frozen=True)
class Setup:
    task: str
    version_dir: Path
    concurrencies: tuple[int, ...]
    seconds: float
    warmup_s: float
    workdir: Path
    max_batch_size: int
    max_delay_ms: float

    @property
    def manifest(self) -> kerve_manifest.Manifest:
        return kerve_manifest.read_manifest(self.version_dir)

    @property
    def model(self) -> str:
        return f"{self.version_dir.parent.name}/{self.version_dir.name}"

    def batch_size_at(self, concurrency: int) -> int:
        """The largest batch ``concurrency`` one-sample clients can make."""
        return min(concurrency, self.max_batch_size)


def measure_task(setup: Setup, systems: list[str]) -> dict:
    """Every system at every concurrency: rows of measurements, and the systems skipped."""
    load = workload(setup.task, setup.manifest)
    rows, skipped = [], {}
    for system in systems:
        started = time.perf_counter()
        if system == "raw":
            rows += measure_raw(setup)
        elif system == "ray" and importlib.util.find_spec("ray") is None:
            skipped[system] = 'not installed (pip install -e ".[ray]")'
            continue
        else:
            with start_system(system, setup, load.query) as (base_url, process, path):
                for concurrency in setup.concurrencies:
                    row = measure_server(system, base_url, path, process, load, setup, concurrency)
                    rows.append(row)
        print(f"  {system}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return {"rows": rows, "skipped": skipped}


def measure_raw(setup: Setup) -> list[dict]:
    sizes = sorted({setup.batch_size_at(c) for c in setup.concurrencies})
    command = [
        sys.executable, "-m", "bench.raw_model", str(setup.version_dir), "--task", setup.task,
        "--batch-sizes", ",".join(map(str, sizes)), "--seconds", str(setup.seconds),
    ]  # fmt: skip
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if output.returncode != 0:
        raise RuntimeError(f"the raw model run failed:\n{output.stderr[-3000:]}")
    measured = json.loads(output.stdout.strip().splitlines()[-1])
    by_size = {run["batch_size"]: run for run in measured["runs"]}
    rows = []
    for concurrency in setup.concurrencies:
        run = by_size[setup.batch_size_at(concurrency)]
        rows.append(
            {
                "system": "raw",
                "concurrency": concurrency,
                "throughput_per_s": round(run["samples_per_s"], 2),
                "p50_ms": round(run["ms_per_batch"], 1),  # one call: every sample waits for it
                "mean_ms": round(run["ms_per_batch"], 1),
                "p95_ms": None,
                "p99_ms": None,
                "mean_batch_size": run["batch_size"],
                "model_ms": round(run["ms_per_batch"], 1),
                "server_cpu_percent": round(run["cpu_percent"], 1),
                "peak_rss_mib": round(measured["peak_rss_bytes"] / 2**20),
                "client_cpu_percent": None,
                "requests": run["calls"] * run["batch_size"],
                "errors": 0,
            }
        )
    return rows


@contextlib.contextmanager
def start_system(system: str, setup: Setup, query: str):
    """Yield (base_url, psutil.Process, request path) of a ready server for ``system``."""
    log = setup.workdir / f"{setup.task}-{system}.log"
    version_dir = str(setup.version_dir)
    if system in ("kerve", "kerve-unbatched"):
        models_dir = _one_model_repository(setup)
        batch_size = setup.max_batch_size if system == "kerve" else 1
        batching = {"max_batch_size": batch_size, "max_delay_ms": setup.max_delay_ms}
        name = setup.version_dir.parent.name
        with running_service(models_dir, log, {"SERVE_BATCHING": json.dumps(batching)}) as served:
            yield (*served, task_path(served[0], name) + query)
    elif system == "naive":
        arguments = ["-m", "bench.naive_app", version_dir, "--task", setup.task]
        with running_process(arguments, log) as served:
            yield (*served, "/predict")
    elif system == "ray":
        arguments = [
            "-m", "bench.ray_app", version_dir, "--task", setup.task,
            "--max-batch-size", str(setup.max_batch_size),
            "--max-delay-ms", str(setup.max_delay_ms),
        ]  # fmt: skip
        with running_process(arguments, log) as served:
            yield (*served, "/predict")
    else:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")


def measure_server(
    system: str, base_url: str, path: str, process, load: Workload, setup: Setup, concurrency: int
) -> dict:
    """One closed-loop phase against a running server, with the server's own figures."""
    before = batch_totals(system, base_url)
    cpu_before = tree_cpu_seconds(process)
    with PeakMemory(process) as memory:
        started = time.perf_counter()
        result = load.drive(base_url + path, concurrency, setup.seconds, setup.warmup_s)
        wall = time.perf_counter() - started
    cpu = tree_cpu_seconds(process) - cpu_before
    after = batch_totals(system, base_url)
    samples, batches, model_s = (a - b for a, b in zip(after, before, strict=True))
    row = {"system": system, **result.summary()}
    row["mean_batch_size"] = round(samples / batches, 2) if batches else 1.0
    row["model_ms"] = round(1000 * model_s / batches, 1) if batches else None
    row["server_cpu_percent"] = round(100 * cpu / wall, 1)
    row["peak_rss_mib"] = round(memory.peak / 2**20)
    return row


def batch_totals(system: str, base_url: str) -> tuple[float, float, float]:
    """(samples, batches, seconds in the model) so far, where the server counts them
    (warm-up included: take differences); zeros where it does not."""
    if system in ("kerve", "kerve-unbatched"):
        text = httpx.get(f"{base_url}/metrics").text

        def total(name: str) -> float:
            pattern = rf"^kerve_{name}\{{.*\}} (\S+)$"
            return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))

        return total("batch_size_sum"), total("batch_size_count"), total("inference_seconds_sum")
    if system == "ray":
        stats = httpx.get(f"{base_url}/stats").json()
        return stats["samples"], stats["batches"], stats["model_seconds"]
    return 0.0, 0.0, 0.0  # the naive app: one sample per model call, not timed


class PeakMemory:
    """The largest resident memory of a process tree, sampled every 0.2 s in a thread."""

    def __init__(self, process) -> None:
        self.process = process
        self.peak = tree_rss_bytes(process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, tree_rss_bytes(self.process))


def _one_model_repository(setup: Setup) -> Path:
    """A repository holding only the benchmarked version (a link to it)."""
    root = setup.workdir / f"models-{setup.task}"
    link = root / setup.version_dir.parent.name / setup.version_dir.name
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(setup.version_dir.resolve(), target_is_directory=True)
    return root
