"""A/B one change: alternate closed-loop phases between servers that are already running.

    python -m bench.ab before=http://127.0.0.1:8931 after=http://127.0.0.1:8932 \
        --task classify --models-dir models --concurrency 1,16,64 --seconds 6 --rounds 5

Start each variant yourself (one from a ``git worktree`` of the old commit, or the
same code with other ``SERVE_`` settings), all serving the same model. Phases
alternate server by server within every round, so the host's drift falls on every
variant alike; medians over the rounds are printed at the end.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import kerve_manifest
from bench import standalone
from bench.server import ROOT
from bench.workloads import TASKS, task_path, workload


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("servers", nargs="+", help="name=base_url")
    parser.add_argument("--task", choices=sorted(TASKS), default="classify")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", help="default: the task's demo model")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    version_dir = standalone.find_version(args.models_dir, args.task, args.model)
    load = workload(args.task, kerve_manifest.read_manifest(version_dir))
    servers = dict(server.split("=", 1) for server in args.servers)
    first_url = next(iter(servers.values()))
    path = task_path(first_url, version_dir.parent.name) + load.query
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    runs: dict[tuple[str, int], list[dict]] = {}
    for number in range(args.rounds):
        for concurrency in concurrencies:
            for name, base_url in servers.items():
                result = load.drive(base_url + path, concurrency, args.seconds, args.warmup)
                summary = result.summary()
                runs.setdefault((name, concurrency), []).append(summary)
                print(f"round {number} {name} c={concurrency}: {_brief(summary)}", flush=True)
    medians = {
        key: {
            field: statistics.median(run[field] for run in values)
            for field in ("throughput_per_s", "p50_ms", "p99_ms")
        }
        for key, values in runs.items()
    }
    print(f"medians of {args.rounds} rounds:")
    for (name, concurrency), median in sorted(medians.items(), key=lambda kv: kv[0][::-1]):
        print(f"  {name:>12} c={concurrency:<3} {_brief(median)}")
    return medians


def _brief(run: dict) -> str:
    return (
        f"{run['throughput_per_s']:7.1f}/s  p50 {run['p50_ms']:7.1f} ms  "
        f"p99 {run['p99_ms']:7.1f} ms"
    )


if __name__ == "__main__":
    main()
