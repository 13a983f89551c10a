"""The same model on Ray Serve, batched with ``@serve.batch``, for comparison.

    python -m bench.ray_app VERSION_DIR --task classify --port 8002 \
        --max-batch-size 32 --max-delay-ms 5 --engine onnxruntime --stats-file F

One replica on a local Ray instance, with Kerve's batch size and delay, and Kerve's
preprocessing, model call (on the engine Kerve chose, padded to the same batch sizes,
warmed up the same way) and response code. It receives the upload as the request body,
as Kerve does. Preprocessing and the model run in threads, so that the replica's event
loop keeps taking requests while a batch runs: the way to give Ray Serve its best showing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bench import peers

MAX_ONGOING_REQUESTS = 1024  # Ray's default (5) would queue the clients in its proxy


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class KerasModel:
    def __init__(self, args: argparse.Namespace):
        self.served = peers.load(args)  # in the replica's process
        self.stats = peers.BatchStats(args.stats_file)
        self.batch.set_max_batch_size(args.max_batch_size)
        self.batch.set_batch_wait_timeout_s(args.max_delay_ms / 1000)

    @serve.batch
    async def batch(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        return await asyncio.to_thread(peers.predict_stacked, self.served, self.stats, requests)

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"ready": True})
        served = self.served
        task_request = served.workload.request(await request.body())
        prepared = await asyncio.to_thread(served.runtime.preprocess, task_request)
        outputs = await self.batch(prepared.samples)
        body = await asyncio.to_thread(served.finish, task_request, prepared, outputs)
        return Response(body, media_type="application/json")


def main() -> None:
    args = peers.parse_args(__doc__.splitlines()[0])
    args.version_dir = args.version_dir.resolve()
    args.stats_file = args.stats_file and Path(args.stats_file).resolve()
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(KerasModel.bind(args), route_prefix="/")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
