"""Schemathesis against a real Kerve server: ``python -m tests.schema.run_schemathesis``.

Publishes one tiny model of each task into a temporary repository, serves it with uvicorn
on a free port (API keys off), and runs ``schemathesis run <url>/openapi.json --checks all``
with ``tests/schema/schemathesis.toml``, a fixed seed and enough examples per operation for
at least ``--cases`` in all. Exits non-zero on any failure or error, or on fewer cases than
asked (``make test`` runs it). Options after ``--`` go to ``schemathesis run``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests import helpers

HERE = Path(__file__).parent
CONFIG = HERE / "schemathesis.toml"
MIN_CASES = 1000
SEED = 20240522
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def publish_every_task(repository: Path) -> None:
    """One tiny model of each task, under the names schemathesis.toml gives them."""
    helpers.publish_colour_classifier(repository)  # colours
    helpers.publish_colour_segmenter(repository)  # regions
    helpers.publish_captioner(repository)  # captioner
    helpers.publish_denoiser(repository)  # denoiser
    helpers.publish_upscaler(repository)  # upscaler
    helpers.publish_generator(repository)  # generator
    helpers.publish_tensor_model(repository)  # pair


def count_operations(spec: dict) -> int:
    return sum(1 for item in spec["paths"].values() for method in item if method in METHODS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=MIN_CASES, help="at least this many")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("extra", nargs="*", help="more `schemathesis run` options, after --")
    args = parser.parse_args(argv)
    started = time.monotonic()
    # The server's settings are make_settings' alone: no API keys or limits from the shell.
    for variable in [name for name in os.environ if name.startswith("SERVE_")]:
        del os.environ[variable]
    with tempfile.TemporaryDirectory(prefix="kerve-schemathesis-") as folder:
        repository = Path(folder) / "models"
        publish_every_task(repository)
        report = Path(folder) / "report.json"
        with helpers.live_server(helpers.make_settings(repository, poll_interval_s=0)) as url:
            operations = count_operations(httpx.get(f"{url}/openapi.json").json())
            per_operation = math.ceil(args.cases / operations)
            print(
                f"schemathesis: {operations} operations x {per_operation} examples "
                f"(at least {operations * per_operation} cases), seed {args.seed}",
                flush=True,
            )
            command = [
                sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
                "run", f"{url}/openapi.json", "--checks", "all",
                "--max-examples", str(per_operation), "--seed", str(args.seed),
                "--report", "json", "--report-json-path", str(report), *args.extra,
            ]  # fmt: skip
            status = subprocess.run(command, check=False).returncode
        summary = json.loads(report.read_text()) if report.exists() else {}
    cases = summary.get("test_cases", {}).get("generated", 0)
    failures = sum(group["count"] for group in summary.get("failures", []))
    errors = sum(group["count"] for group in summary.get("errors", []))
    print(
        f"schemathesis: {cases} cases, {failures} failures, {errors} errors, exit {status}, "
        f"{time.monotonic() - started:.0f} s in all",
        flush=True,
    )
    if status == 0 and cases < args.cases:
        print(f"schemathesis: fewer cases than the {args.cases} asked", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
