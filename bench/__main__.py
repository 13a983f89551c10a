"""Benchmark Kerve against the raw model on each engine, itself on Keras and without
batching, a naive app, Triton, BentoML, LitServe and Ray Serve.

    python -m bench --task classify|segment|caption|denoise|generate|all
                    [--models-dir models] [--concurrency 1,4,16,64] [--seconds 10]
                    [--systems raw-keras,raw-onnxruntime,raw-openvino,kerve,kerve-keras,
                               kerve-unbatched,naive,triton,bentoml,litserve,ray]
                    [--docs docs/BENCHMARKS.md]

Per task it serves the demo model (``make models``) and writes
``bench/results/<task>.json`` (with the engine Kerve's ``SERVE_ENGINE=auto`` chose, read
from its ``/v1/models/<name>``); then it writes ``report.md`` and two plots from every
task's results in the results folder, and with ``--docs`` fills that file's bench
section and puts the plots in ``--img-dir`` (``--report-only``: that alone).

The systems, and how each receives a request's image (part of what each costs):

- ``raw-keras``, ``raw-onnxruntime``, ``raw-openvino``: the runtime's ``predict_batch`` in a
  loop on one engine, on samples preprocessed beforehand: no request at all. "× fastest
  raw" divides by the fastest of them at each batch size; a missing engine is skipped.
- ``kerve`` (``SERVE_ENGINE=auto``), ``kerve-keras`` (``SERVE_ENGINE=keras``),
  ``kerve-unbatched``: the upload as the request body, on its task route.
- ``naive``: the upload as the request body; Keras's ``model.predict`` per request.
- ``triton``: the Open Inference Protocol v2 spoken to Triton directly, the image as a
  BYTES tensor with the binary extension (and the JSON response back as one).
- ``bentoml``: a multipart/form-data file part (BentoML spools it to a temporary file).
- ``litserve``: base64 in JSON, ``{"image": {"b64": ...}}`` (LitServe reads JSON or forms).
- ``ray``: the upload as the request body.

Triton, BentoML, LitServe and Ray Serve run Kerve's preprocessing, its model call on the
engine Kerve's auto chose (padded as Kerve pads) and its postprocessing, with Kerve's
max_batch_size and max_delay_ms, each in its own venv (``make bench-peers``; skipped,
with the reason, where it is missing). A generate request's JSON goes the same way as
an image (as itself in LitServe's JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path

import kerve_manifest
from bench import harness, report, standalone
from bench.server import ROOT
from bench.workloads import TASKS


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    if args.report_only:
        return write_report(args)
    workdir = Path(tempfile.mkdtemp(prefix="kerve-bench-"))
    print(f"logs in {workdir}", flush=True)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        version_dir = standalone.find_version(args.models_dir, task, args.model)
        batching = kerve_manifest.read_manifest(version_dir).batching
        setup = harness.Setup(
            task=task,
            version_dir=version_dir,
            concurrencies=args.concurrency,
            seconds=args.seconds,
            warmup_s=args.warmup,
            workdir=workdir,
            max_batch_size=args.max_batch_size or batching.max_batch_size,
            max_delay_ms=batching.max_delay_ms if args.max_delay_ms is None else args.max_delay_ms,
        )
        print(f"{task}: {setup.model}", flush=True)
        measured = harness.measure_task(setup, args.systems)
        result = {
            "task": task,
            "model": setup.model,
            "date": datetime.date.today().isoformat(),
            "machine": machine_description(),
            "command": "python -m bench " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
            "max_batch_size": setup.max_batch_size,
            "max_delay_ms": setup.max_delay_ms,
            "seconds": setup.seconds,
            "warmup_s": setup.warmup_s,
            **measured,  # rows, skipped, engines (each system's), kerve_engine (auto's choice)
        }
        (args.results_dir / f"{task}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(report.task_table(result), flush=True)
    return write_report(args)


def write_report(args) -> dict[str, dict]:
    """The report of every task measured into the results folder, this run's or earlier."""
    results = {}
    for task in TASKS:  # in the usual order
        path = args.results_dir / f"{task}.json"
        if path.exists():
            results[task] = report.upgraded(json.loads(path.read_text()))
    img_dir = args.img_dir or args.results_dir
    report.plot(results, img_dir)
    prefix = report.image_prefix(args.docs, img_dir, args.results_dir)
    section = report.markdown(results, prefix)
    (args.results_dir / "report.md").write_text(section + "\n")
    if args.docs is not None:
        report.update_docs(args.docs, section)
    if args.readme is not None:
        first = next(iter(results.values()))
        summary = f"{report.summary_table(results)}\n\n{first['machine']}, {first['date']}."
        report.update_docs(args.readme, summary, marker="bench-summary")
    print(report.summary_table(results))
    print(f"wrote {args.results_dir / 'report.md'}" + (f" and {args.docs}" if args.docs else ""))
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=[*TASKS, "all"], default="classify")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", help="a model name (default: the task's demo model)")
    parser.add_argument("--concurrency", type=_integers, default=(1, 4, 16, 64))
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each phase")
    parser.add_argument(
        "--systems",
        type=lambda text: text.split(","),
        default=list(harness.SYSTEMS),
        help=f"comma-separated, from {','.join(harness.SYSTEMS)}",
    )
    parser.add_argument("--max-batch-size", type=int, help="default: the manifest's")
    parser.add_argument("--max-delay-ms", type=float, help="default: the manifest's")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--docs", type=Path, help="a markdown file whose bench section to fill")
    parser.add_argument("--img-dir", type=Path, help="where the plots go (default: results)")
    parser.add_argument("--readme", type=Path, help="a markdown file whose summary to fill")
    parser.add_argument(
        "--report-only", action="store_true", help="measure nothing: report the results folder"
    )
    args = parser.parse_args(argv)
    unknown = set(args.systems) - set(harness.SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {list(harness.SYSTEMS)}")
    return args


def _integers(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(part) for part in text.split(",")}))


def machine_description() -> str:
    import keras

    cpu, flags = platform.machine(), "flags unknown"
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text()
        names = re.findall(r"^model name\s*:\s*(.+)$", info, re.M)
        cpu = names[0] if names else cpu
        present = set(next(iter(re.findall(r"^flags\s*:\s*(.+)$", info, re.M)), "").split())
        flags = " ".join(f for f in NOTABLE_CPU_FLAGS if f in present) or "no AVX2"
    return (
        f"{cpu} ({flags}), {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Keras {keras.__version__} ({keras.backend.backend()})"
    )


# The vector and matrix units that decide how fast a CPU runs a model.
NOTABLE_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


if __name__ == "__main__":
    main()
