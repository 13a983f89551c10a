"""Time each stage of one request in-process, to see what is worth tuning.

    python -m bench.stages --task classify --models-dir models

Per body of the task's workload, the median over repeats of: ``preprocess``
(decode, resize, normalise), ``predict_batch`` with a batch of 1, ``postprocess``,
and the JSON encoding two ways (pydantic's ``model_dump_json``, and FastAPI's
``jsonable_encoder`` + ``json.dumps``, which a route returning a model goes through).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from fastapi.encoders import jsonable_encoder

from bench import standalone
from bench.server import ROOT
from bench.workloads import TASKS


def median_ms(function, repeats: int) -> float:
    function()  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def stages(served: standalone.Served, repeats: int) -> dict[str, float]:
    runtime = served.runtime
    totals: dict[str, list[float]] = {}
    for body in served.workload.bodies:
        request = served.workload.request(body)
        prepared = runtime.preprocess(request)
        outputs = runtime.predict_batch(prepared.samples)
        response = runtime.postprocess(outputs, request, prepared.context)
        measured = {
            "preprocess": median_ms(lambda: runtime.preprocess(request), repeats),  # noqa: B023
            "predict_batch (1)": median_ms(
                lambda: runtime.predict_batch(prepared.samples),  # noqa: B023
                repeats,
            ),
            "postprocess": median_ms(
                lambda: runtime.postprocess(outputs, request, prepared.context),  # noqa: B023
                repeats,
            ),
            "model_dump_json": median_ms(response.model_dump_json, repeats),
            "jsonable_encoder + json.dumps": median_ms(
                lambda: json.dumps(jsonable_encoder(response)),  # noqa: B023
                repeats,
            ),
        }
        for stage, ms in measured.items():
            totals.setdefault(stage, []).append(ms)
    return {stage: statistics.median(values) for stage, values in totals.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="classify")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", help="default: the task's demo model")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    version_dir = standalone.find_version(args.models_dir, args.task, args.model)
    measured = stages(standalone.load(version_dir, args.task), args.repeats)
    print(f"{args.task}, {version_dir.parent.name}/{version_dir.name} (median ms per request):")
    for stage, ms in measured.items():
        print(f"  {stage:<32} {ms:8.3f}")
    return measured


if __name__ == "__main__":
    main()
