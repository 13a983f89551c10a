"""Measure one task on every system: the raw model on each engine, Kerve (on the engine its
``SERVE_ENGINE=auto`` chooses, on Keras, and without batching), a naive FastAPI app, and
Triton, BentoML, LitServe and Ray Serve, under closed-loop load at several concurrencies.

Each server runs alone (the others are stopped), serving only the benchmarked model,
and gets every concurrency in turn; each raw engine runs in its own process first. The
batching peers run in their own virtual environments (``make bench-peers``) with Kerve's
preprocessing, batch size, delay and the engine Kerve chose, so that only the serving
differs; a peer whose environment is missing is skipped, with the reason.
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
import psutil

import kerve_manifest
from bench import carriers, peers
from bench.server import ROOT, running_process, running_service, tree_cpu_seconds, tree_rss_bytes
from bench.workloads import Workload, task_path, workload
from service.engines import ENGINES

RAW_ENGINES = ("keras", "onnxruntime", "openvino")
SYSTEMS = {  # name: how the tables call it, in the order they are measured
    "raw-keras": "raw Keras (no server)",
    "raw-onnxruntime": "raw ONNX Runtime (no server)",
    "raw-openvino": "raw OpenVINO (no server)",
    "kerve": "Kerve",
    "kerve-keras": "Kerve on Keras",
    "kerve-unbatched": "Kerve, batching off",
    "naive": "naive FastAPI",
    "triton": "Triton (PyTriton)",
    "bentoml": "BentoML",
    "litserve": "LitServe",
    "ray": "Ray Serve",
}
KERVE_ENGINES = {"kerve": "auto", "kerve-keras": "keras", "kerve-unbatched": "auto"}
PEER_VENVS = ROOT / ".venv-peers"  # one per peer, made by `make bench-peers`
NOT_INSTALLED = "not installed: make bench-peers"


@dataclasses.dataclass(frozen=True)
class Peer:
    """A system Kerve is measured against: ``python -m module VERSION_DIR --task T ...``."""

    module: str
    carrier: str  # how it receives a request's body (bench.carriers)
    path: str  # where requests go; {model}: the model's name
    ready: str  # what answers 200 once it serves
    package: str | None = None  # what its venv must hold (None: this one's packages)
    batched: bool = True  # gets Kerve's batching, Kerve's engine and a stats file


PEERS = {
    "naive": Peer("bench.naive_app", carriers.UPLOAD, "/predict", "/readyz", batched=False),
    "triton": Peer(
        "bench.triton_app",
        carriers.V2_BYTES,
        "/v2/models/{model}/infer",
        "/v2/models/{model}/ready",
        "pytriton",
    ),
    "bentoml": Peer("bench.bentoml_app", carriers.MULTIPART, "/predict", "/readyz", "bentoml"),
    "litserve": Peer("bench.litserve_app", carriers.BASE64_JSON, "/predict", "/health", "litserve"),
    "ray": Peer("bench.ray_app", carriers.UPLOAD, "/predict", "/readyz", "ray"),
}
CARRIERS = {  # system: how it receives the image
    **{system: carriers.UPLOAD for system in KERVE_ENGINES},
    **{system: peer.carrier for system, peer in PEERS.items()},
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

    @property
    def name(self) -> str:
        return self.version_dir.parent.name

    def batch_size_at(self, concurrency: int) -> int:
        """The largest batch ``concurrency`` one-sample clients can make."""
        return min(concurrency, self.max_batch_size)


@dataclasses.dataclass(frozen=True)
class Running:
    """A ready server for one system."""

    system: str
    base_url: str
    process: psutil.Process
    path: str  # where requests go
    stats_file: Path | None = None  # where a batching peer counts its batches

    def batch_totals(self) -> tuple[float, float, float]:
        """(samples, batches, seconds in the model) so far, where the server counts them
        (warm-up included: take differences); zeros where it does not."""
        if self.system in KERVE_ENGINES:
            text = httpx.get(f"{self.base_url}/metrics").text

            def total(name: str) -> float:
                pattern = rf"^kerve_{name}\{{.*\}} (\S+)$"
                return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))

            names = ("batch_size_sum", "batch_size_count", "inference_seconds_sum")
            samples, batches, seconds = (total(name) for name in names)
            return samples, batches, seconds
        if self.stats_file is not None:
            return peers.read_stats(self.stats_file)
        return 0.0, 0.0, 0.0  # the naive app: one sample per model call, not timed


def measure_task(setup: Setup, systems: list[str]) -> dict:
    """Every system at every concurrency: rows of measurements, the engine each ran on,
    the engine Kerve's auto chose, and the systems skipped (with why)."""
    load = workload(setup.task, setup.manifest)
    rows, skipped, engines, chosen = [], {}, {}, {}
    for system in sorted(systems, key=list(SYSTEMS).index):
        why = unavailable(system)
        if why is not None:
            skipped[system] = why
            print(f"  {system}: skipped ({why})", flush=True)
            continue
        started = time.perf_counter()
        if system.startswith("raw-"):
            raw_rows, engines[system] = measure_raw(setup, system.removeprefix("raw-"))
            rows += raw_rows
        else:
            if system in PEERS and PEERS[system].batched and not chosen:
                chosen = choose_engine(setup)  # as Kerve would, when Kerve is not measured
            with start_system(system, setup, load.query, chosen) as running:
                engines[system] = served_engine(running, setup, chosen)
                if system == "kerve":
                    chosen = engines[system]
                for concurrency in setup.concurrencies:
                    rows.append(measure_server(running, load, setup, concurrency))
        print(f"  {system}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return {"rows": rows, "skipped": skipped, "engines": engines, "kerve_engine": chosen}


def unavailable(system: str) -> str | None:
    """Why ``system`` cannot be measured here, or None."""
    if system not in SYSTEMS:
        return f"unknown system; choose from {', '.join(SYSTEMS)}"
    if system.startswith("raw-"):
        engine = ENGINES[system.removeprefix("raw-")]
        if not engine.installed():
            return f"not installed: {engine.module} (pip install -e '.[engines]')"
    elif system in PEERS and peer_python(system) is None:
        return NOT_INSTALLED
    return None


def peer_python(system: str) -> str | None:
    """The interpreter a peer runs with: its own venv's, else this one where it has the
    peer's package (Ray may be installed beside Kerve), else None."""
    venv = PEER_VENVS / system / "bin" / "python"
    if venv.exists():
        return str(venv)
    package = PEERS[system].package
    if package is None or importlib.util.find_spec(package) is not None:
        return sys.executable
    return None


def measure_raw(setup: Setup, engine: str) -> tuple[list[dict], dict]:
    """The raw loop on ``engine`` at each concurrency's batch size: rows, and the engine
    (with its precision) as loaded."""
    sizes = sorted({setup.batch_size_at(c) for c in setup.concurrencies})
    command = [
        sys.executable, "-m", "bench.raw_model", str(setup.version_dir), "--task", setup.task,
        "--batch-sizes", ",".join(map(str, sizes)), "--seconds", str(setup.seconds),
        "--engine", engine,
    ]  # fmt: skip
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if output.returncode != 0:
        raise RuntimeError(f"the raw model run on {engine} failed:\n{output.stderr[-3000:]}")
    measured = json.loads(output.stdout.strip().splitlines()[-1])
    by_size = {run["batch_size"]: run for run in measured["runs"]}
    rows = []
    for concurrency in setup.concurrencies:
        run = by_size[setup.batch_size_at(concurrency)]
        rows.append(
            {
                "system": f"raw-{engine}",
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
    return rows, measured["engine"]


def choose_engine(setup: Setup) -> dict:
    """The engine Kerve's ``SERVE_ENGINE=auto`` chooses for the model, found in a process
    of its own (for a run that measures peers but not Kerve)."""
    command = [
        sys.executable, "-m", "bench.standalone", str(setup.version_dir), "--task", setup.task,
        "--engine", "auto", "--max-batch-size", str(setup.max_batch_size),
    ]  # fmt: skip
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if output.returncode != 0:
        raise RuntimeError(f"choosing the engine failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def served_engine(running: Running, setup: Setup, chosen: dict) -> dict:
    """The engine a running system serves on: Kerve says so (``/v1/models/{name}``), a
    batching peer runs Kerve's choice, the naive app Keras."""
    if running.system in KERVE_ENGINES:
        listing = httpx.get(f"{running.base_url}/v1/models/{setup.name}", timeout=30)
        engine = listing.raise_for_status().json()["versions"][0]["engine"]
        return {key: engine[key] for key in ("engine", "precision", "reason")}
    if PEERS[running.system].batched:
        return chosen
    return {"engine": "keras", "precision": "fp32", "reason": "model.predict, as tutorials do"}


@contextlib.contextmanager
def start_system(system: str, setup: Setup, query: str, chosen: dict | None = None):
    """Yield a ready server (``Running``) for ``system``; ``chosen``: the engine Kerve
    chose ({"engine", "precision"}), which the batching peers run on."""
    log = setup.workdir / f"{setup.task}-{system}.log"
    if system in KERVE_ENGINES:
        batch_size = 1 if system == "kerve-unbatched" else setup.max_batch_size
        batching = {"max_batch_size": batch_size, "max_delay_ms": setup.max_delay_ms}
        env = {"SERVE_BATCHING": json.dumps(batching), "SERVE_ENGINE": KERVE_ENGINES[system]}
        with running_service(_one_model_repository(setup), log, env) as (base_url, process):
            yield Running(system, base_url, process, task_path(base_url, setup.name) + query)
        return
    if system not in PEERS:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    peer = PEERS[system]
    python = peer_python(system)
    if python is None:
        raise RuntimeError(f"{system} is {NOT_INSTALLED}")
    arguments = ["-m", peer.module, str(setup.version_dir.resolve()), "--task", setup.task]
    stats_file = None
    if peer.batched:
        chosen = chosen or {"engine": "keras", "precision": "auto"}
        # A compiled engine's precision is a setting; Keras's follows its dtype policy.
        precision = chosen["precision"] if chosen["precision"] in ("fp32", "bf16") else "auto"
        stats_file = setup.workdir / f"{setup.task}-{system}-stats.json"
        stats_file.unlink(missing_ok=True)
        arguments += [
            "--max-batch-size", str(setup.max_batch_size),
            "--max-delay-ms", str(setup.max_delay_ms),
            "--engine", chosen["engine"], "--precision", precision,
            "--stats-file", str(stats_file.resolve()),
        ]  # fmt: skip
    ready = peer.ready.format(model=setup.name)
    with running_process(arguments, log, ready=ready, python=python) as (base_url, process):
        path = peer.path.format(model=setup.name)
        yield Running(system, base_url, process, path, stats_file)


def measure_server(running: Running, load: Workload, setup: Setup, concurrency: int) -> dict:
    """One closed-loop phase against a running server, with the server's own figures."""
    before = running.batch_totals()
    cpu_before = tree_cpu_seconds(running.process)
    with PeakMemory(running.process) as memory:
        started = time.perf_counter()
        result = load.drive(
            running.base_url + running.path,
            concurrency,
            setup.seconds,
            setup.warmup_s,
            CARRIERS[running.system],
        )
        wall = time.perf_counter() - started
    cpu = tree_cpu_seconds(running.process) - cpu_before
    after = running.batch_totals()
    samples, batches, model_s = (a - b for a, b in zip(after, before, strict=True))
    row = {"system": running.system, **result.summary()}
    row["mean_batch_size"] = round(samples / batches, 2) if batches else 1.0
    row["model_ms"] = round(1000 * model_s / batches, 1) if batches else None
    row["server_cpu_percent"] = round(100 * cpu / wall, 1)
    row["peak_rss_mib"] = round(memory.peak / 2**20)
    return row


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
