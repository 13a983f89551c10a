"""The raw model ceiling: the runtime's ``predict_batch`` in a loop, no server in the way.

    python -m bench.raw_model VERSION_DIR --task classify --batch-sizes 1,4,16,32 \
        --engine onnxruntime

On one engine (``keras``, ``onnxruntime``, ``openvino``; exported and compiled as the
service does, cached where it caches), so that each engine's ceiling can be measured.
Run as its own process, so that it gets the same thread settings as a server. The
samples are the benchmark's own requests, preprocessed once and repeated to fill
each batch (for captioning the decoding loop is part of the model call, and it
runs as long as the real photos make it). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from bench import peers, standalone
from bench.workloads import TASKS


def measure(runtime, pool: np.ndarray, batch_size: int, seconds: float) -> dict:
    """``predict_batch`` on ``batch_size`` samples drawn in turn from ``pool``."""
    batch = pool[np.arange(batch_size) % len(pool)]
    runtime.predict_batch(batch)  # warm: warm-up ran blank samples, not these
    calls, cpu_before, started = 0, time.process_time(), time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or calls < 3:
        runtime.predict_batch(batch)
        calls += 1
    return {
        "batch_size": batch_size,
        "calls": calls,
        "seconds": round(elapsed, 3),
        "samples_per_s": calls * batch_size / elapsed,
        "ms_per_batch": 1000 * elapsed / calls,
        "cpu_percent": 100 * (time.process_time() - cpu_before) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per batch size")
    parser.add_argument("--engine", choices=peers.ENGINE_CHOICES, default="keras")
    args = parser.parse_args()
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    served = standalone.load(
        args.version_dir, args.task, max_batch_size=max(sizes), engine=args.engine
    )
    runtime, bodies = served.runtime, served.workload.bodies
    pool = np.concatenate([runtime.preprocess(served.workload.request(b)).samples for b in bodies])
    runs = [measure(runtime, pool, size, args.seconds) for size in sizes]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    engine = standalone.engine_of(runtime)
    print(json.dumps({"runs": runs, "peak_rss_bytes": peak_rss, "engine": engine}))


if __name__ == "__main__":
    main()
