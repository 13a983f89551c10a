"""The same model on BentoML, batched by its adaptive batching, for comparison.

    python -m bench.bentoml_app VERSION_DIR --task classify --port 8004 \
        --max-batch-size 32 --max-delay-ms 5 --engine onnxruntime --stats-file F

``bentoml serve`` runs one worker with one service, whose batchable API
(``@bentoml.api(batchable=True)``) takes Kerve's max_batch_size. BentoML has no maximum
delay: its dispatcher sizes each batch from the traffic it sees, within a latency budget,
and answers 503 to a request it expects to miss that budget; the budget is set far above
any latency here (60 s), so that it shapes no batch and a 503 means overload. Requests
carry the photo (or a generate request's JSON) as a multipart file part, BentoML's file
input, which it spools to a temporary file; the batch function reads the files, runs
Kerve's preprocessing (in as many threads as Kerve decodes in), one model call on the
engine Kerve chose (padded as Kerve pads) and Kerve's postprocessing.

Needs its own venv (``make bench-peers``: BentoML pins its own OpenTelemetry and cattrs).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import bentoml

from bench import peers

ARGUMENTS = "KERVE_BENCH_BENTOML_ARGS"  # the command line, for the worker bentoml starts
LATENCY_BUDGET_MS = 60_000


# bentoml imports this module in its own processes: the command line comes by environment.
_ARGUMENTS = json.loads(os.environ.get(ARGUMENTS, "null"))
_ARGS = peers.parse_args(__doc__.splitlines()[0], _ARGUMENTS) if _ARGUMENTS else None


# One worker, as Kerve runs one process; no access log line per request (Kerve logs none).
@bentoml.service(workers=1, traffic={"timeout": 300}, logging={"access": {"enabled": False}})
class KerveModel:
    def __init__(self) -> None:
        served = peers.load(_ARGS)
        self.server = peers.BatchServer(
            served, peers.BatchStats(_ARGS.stats_file), peers.preprocess_threads()
        )

    @bentoml.api(
        route="/predict",
        batchable=True,
        max_batch_size=_ARGS.max_batch_size if _ARGS else 32,
        max_latency_ms=LATENCY_BUDGET_MS,
    )
    def predict(self, bodies: list[Path]) -> list[dict]:
        """One response per uploaded body (the parameter is named after the form field)."""
        results = self.server.results([path.read_bytes() for path in bodies])
        return [result.model_dump(mode="json") for result in results]


def main() -> None:
    arguments = sys.argv[1:]
    args = peers.parse_args(__doc__.splitlines()[0], arguments)
    os.environ[ARGUMENTS] = json.dumps(arguments)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")  # offline: no usage reports
    root = Path(__file__).resolve().parents[1]
    os.execv(
        sys.executable,
        [sys.executable, "-m", "bentoml", "serve", "bench.bentoml_app:KerveModel",
         "--host", "127.0.0.1", "--port", str(args.port), "--working-dir", str(root)],
    )  # fmt: skip


if __name__ == "__main__":
    main()
