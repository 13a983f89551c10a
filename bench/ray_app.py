"""The same model on Ray Serve, batched with ``@serve.batch``, for comparison.

    python -m bench.ray_app VERSION_DIR --task classify --port 8002 \
        --max-batch-size 32 --max-delay-ms 5

One replica on a local Ray instance, with Kerve's batch size and delay, and Kerve's
preprocessing, model call (padded to the same batch sizes, warmed up the same way)
and response code. Preprocessing and the model run in threads, so that the
replica's event loop keeps taking requests while a batch runs: the way to give
Ray Serve its best showing. ``GET /stats`` reports the batches it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bench.workloads import TASKS

MAX_ONGOING_REQUESTS = 1024  # Ray's default (5) would queue the clients in its proxy


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class KerasModel:
    def __init__(self, version_dir: str, task: str, max_batch_size: int, max_delay_ms: float):
        from bench import standalone  # in the replica's process

        self.served = standalone.load(Path(version_dir), task, max_batch_size=max_batch_size)
        self.config = self.served.runtime.batching
        self.batch.set_max_batch_size(max_batch_size)
        self.batch.set_batch_wait_timeout_s(max_delay_ms / 1000)
        self.batches = self.samples = 0
        self.model_seconds = 0.0

    @serve.batch
    async def batch(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        samples = np.concatenate(requests)
        count = len(samples)
        padded = np.zeros((self.config.padded_size(count), *samples.shape[1:]), samples.dtype)
        padded[:count] = samples
        started = time.perf_counter()
        outputs = await asyncio.to_thread(self.served.runtime.predict_batch, padded)
        self.model_seconds += time.perf_counter() - started
        self.batches += 1
        self.samples += count
        bounds = np.cumsum([len(r) for r in requests])[:-1]
        return np.split(outputs[:count], bounds)

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":
            if request.url.path.endswith("/stats"):
                return JSONResponse(
                    {"batches": self.batches, "samples": self.samples,
                     "model_seconds": self.model_seconds}
                )  # fmt: skip
            return JSONResponse({"ready": True})
        served = self.served
        task_request = served.workload.request(await request.body())
        prepared = await asyncio.to_thread(served.runtime.preprocess, task_request)
        outputs = await self.batch(prepared.samples)
        body = await asyncio.to_thread(served.finish, task_request, prepared, outputs)
        return Response(body, media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--max-delay-ms", type=float, required=True)
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = KerasModel.bind(
        str(args.version_dir.resolve()), args.task, args.max_batch_size, args.max_delay_ms
    )
    serve.run(app, route_prefix="/")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
