"""The same model on LitServe, batched by its inference loop, for comparison.

    python -m bench.litserve_app VERSION_DIR --task classify --port 8005 \
        --max-batch-size 32 --max-delay-ms 5 --engine onnxruntime --stats-file F

LitServe runs an HTTP server process and one inference worker process (a CPU, one worker
per device) joined by queues; the worker collects up to Kerve's max_batch_size requests,
waiting at most Kerve's max_delay_ms (``LitAPI(max_batch_size=, batch_timeout=)``). Its
endpoints read JSON or forms only, so requests carry the photo as base64 in JSON, Kerve's
own JSON image form ``{"image": {"b64": ...}}`` (a generate request's JSON as it is).
The worker decodes each request with Kerve's preprocessing, runs one model call on the
engine Kerve chose (padded as Kerve pads) and encodes each response with Kerve's
postprocessing, as LitServe's ``decode_request``, ``predict`` and ``encode_response``.

Needs its own venv (``make bench-peers``).
"""

from __future__ import annotations

import argparse
from typing import Any

import litserve

from bench import carriers, peers

REQUEST_TIMEOUT_S = 300  # LitServe's default (30 s) would time out a slow model's queue


class KerveAPI(litserve.LitAPI):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(
            max_batch_size=args.max_batch_size,
            batch_timeout=args.max_delay_ms / 1000,
            api_path="/predict",
        )
        self.args = args

    def setup(self, device: str) -> None:
        self.served = peers.load(self.args)  # in the inference worker's process
        self.stats = peers.BatchStats(self.args.stats_file)

    def decode_request(self, request: dict) -> tuple[Any, Any]:
        task_request = self.served.workload.request(carriers.body_of(request))
        return task_request, self.served.runtime.preprocess(task_request)

    def batch(self, inputs: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        return inputs  # stacked in predict, with the padding Kerve uses

    def predict(self, inputs: list[tuple[Any, Any]]) -> list[tuple[Any, Any, Any]]:
        groups = [prepared.samples for _, prepared in inputs]
        outputs = peers.predict_stacked(self.served, self.stats, groups)
        return [(*pair, output) for pair, output in zip(inputs, outputs, strict=True)]

    def unbatch(self, outputs: list[tuple[Any, Any, Any]]) -> list[tuple[Any, Any, Any]]:
        return outputs

    def encode_response(self, output: tuple[Any, Any, Any]) -> dict:
        return self.served.result(*output).model_dump(mode="json")


def main() -> None:
    args = peers.parse_args(__doc__.splitlines()[0])
    server = litserve.LitServer(KerveAPI(args), accelerator="cpu", timeout=REQUEST_TIMEOUT_S)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
