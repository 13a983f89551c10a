"""Overload and isolation: what a Kerve server does when it is sent more than it can serve.

    python -m bench.robustness --models-dir models                 # `make check-robustness`
    python -m bench.robustness --overload 5 --seconds 60 --docs docs/BENCHMARKS.md

One server of the repository's models, started as the README starts it:

1. **Capacity**: closed-loop clients on the classifier's task route, its images/s.
2. **Open-loop overload**: requests sent at ``--overload`` times that rate for
   ``--seconds``, whatever the answers (a client that waits for answers slows down with
   the server and hides the overload). Counted: 200 / 503 / 504 / other, the latency of
   the accepted (target p99 within the model's ``timeout_ms``) and of the refused
   (target p99 50 ms), and ``GET /healthz`` probed every 100 ms throughout (target p99
   100 ms: a Kubernetes liveness probe gives up at seconds); the server's peak RSS.
3. **Isolation, issue 22's findings 1 and 2**: 64 in-limit 6300x6300 PNGs in one request,
   and four in another that fits, to the classifier, then a photo to the segmenter one
   second later (target: answered within 2 s); 32 overlays of that PNG at once to the
   segmenter (target: peak RSS within the pixel budget's bound, twice the idle RSS).

Targets are printed beside the figures; nothing here fails a build (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bench import report
from bench.__main__ import machine_description
from bench.harness import PeakMemory
from bench.loadgen import cpu_seconds, read_response, request_bytes, run_load
from bench.server import ROOT, running_service, tree_rss_bytes
from bench.workloads import model_listing, photo_jpegs, task_path

HEALTH_PROBE_S = 0.1
CLIENT_TIMEOUT_S = 60.0
BOMB_SIDE = 6300  # issue 22's PNG: 39.7 megapixels, 116 KB


@dataclasses.dataclass
class Outcome:
    status: int  # 0: the connection failed
    latency_s: float


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


class Connections:
    """Keep-alive connections to one server, opened as needed, reused when free."""

    def __init__(self, url: httpx.URL) -> None:
        self.url = url
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send(self, request: bytes, reuse: bool = True) -> int:
        reused = reuse and bool(self._idle)
        reader, writer = self._idle.pop() if reused else await self._open()
        try:
            writer.write(request)
            status, _, closing = await read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError, IndexError):
            writer.close()
            if reused:  # a keep-alive connection the server closed while it was idle
                return await self.send(request, reuse=False)
            raise
        except BaseException:
            writer.close()
            raise
        if closing:
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status

    async def _open(self):
        return await asyncio.open_connection(self.url.host, self.url.port)

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()


async def _timed(send, request: bytes, outcomes: list[Outcome]) -> None:
    started = time.perf_counter()
    try:
        status = await asyncio.wait_for(send(request), CLIENT_TIMEOUT_S)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
        status = 0
    outcomes.append(Outcome(status, time.perf_counter() - started))


async def _open_loop(url: str, requests: list[bytes], rate: float, seconds: float):
    """Send ``requests`` in turn at ``rate`` per second for ``seconds``, each at its time
    whatever the earlier ones' fate; probe /healthz alongside. (outcomes, health latencies)"""
    target = httpx.URL(url)
    pool = Connections(target)
    health_request = f"GET /healthz HTTP/1.1\r\nHost: {target.host}\r\n\r\n".encode()
    health = Connections(target)
    outcomes: list[Outcome] = []
    health_outcomes: list[Outcome] = []
    tasks = []
    start = time.perf_counter()
    end = start + seconds

    async def probe() -> None:
        while time.perf_counter() < end:
            await _timed(health.send, health_request, health_outcomes)
            await asyncio.sleep(HEALTH_PROBE_S)

    prober = asyncio.create_task(probe())
    for index in range(int(rate * seconds)):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        request = requests[index % len(requests)]
        tasks.append(asyncio.create_task(_timed(pool.send, request, outcomes)))
    await asyncio.gather(*tasks, prober)
    pool.close()
    health.close()
    return outcomes, [o.latency_s for o in health_outcomes if o.status == 200]


def server_latency_buckets(base_url: str, status: str) -> dict[float, float]:
    """The server's own latency histogram for answers of ``status`` on the task routes:
    cumulative count per bucket bound (seconds), all routes together."""
    counts: dict[float, float] = {}
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name != "kerve_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_bucket") and labels["status"] == status and labels["task"]:
                bound = float(labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    return counts


def bucket_percentile_ms(before: dict, after: dict, q: float) -> float | None:
    """The smallest histogram bound within which ``q`` % of the answers between two scrapes
    fell, in ms (an upper bound on that percentile, as exact as the buckets)."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return None
    for bound in sorted(counts):
        if counts[bound] >= total * q / 100:
            return bound * 1000
    return None


def overload(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict:
    target = httpx.URL(url)
    path = target.raw_path.decode()
    base_url = f"{target.scheme}://{target.host}:{target.port}"
    requests = [request_bytes(target.host, path, b, {"Content-Type": "image/jpeg"}) for b in bodies]
    before = server_latency_buckets(base_url, "503")
    cpu_before, wall_before = cpu_seconds(), time.perf_counter()
    outcomes, health = asyncio.run(_open_loop(url, requests, rate, seconds))
    client_cpu = 100 * (cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before)
    after = server_latency_buckets(base_url, "503")
    by_status: dict[int, list[float]] = {}
    for outcome in outcomes:
        by_status.setdefault(outcome.status, []).append(outcome.latency_s)
    accepted, refused = by_status.get(200, []), by_status.get(503, [])
    return {
        "rate_per_s": round(rate, 1),
        "seconds": seconds,
        "sent": len(outcomes),
        "statuses": {str(s): len(v) for s, v in sorted(by_status.items())},
        "accepted_per_s": round(len(accepted) / seconds, 1),
        "accepted_p50_ms": percentile_ms(accepted, 50),
        "accepted_p99_ms": percentile_ms(accepted, 99),
        "refused_p50_ms": percentile_ms(refused, 50),
        "refused_p99_ms": percentile_ms(refused, 99),
        # In the server, from its arrival in the middleware to its answer: what the client
        # measures beyond it is the event loop reaching the connection, and the client's own
        # lag when both share two cores.
        "refused_server_p99_ms_at_most": bucket_percentile_ms(before, after, 99),
        "client_cpu_percent": round(client_cpu),  # of one of the machine's cores
        "healthz_probes": len(health),
        "healthz_p50_ms": percentile_ms(health, 50),
        "healthz_p99_ms": percentile_ms(health, 99),
        "healthz_max_ms": percentile_ms(health, 100),
    }


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (BOMB_SIDE, BOMB_SIDE)).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(images: list[bytes]) -> dict:
    return {"files": [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]}


def isolation(base_url: str, classify: str, segment: str, photo: bytes, bomb: bytes) -> dict:
    """Finding 1: large uploads to the classifier, then a photo to the segmenter."""
    found = {}
    with httpx.Client(base_url=base_url, timeout=CLIENT_TIMEOUT_S) as client:
        for name, count in (("64 PNGs", 64), ("4 PNGs", 4)):
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                started = time.perf_counter()
                large = pool.submit(client.post, classify, **multipart([bomb] * count))
                time.sleep(1.0)
                other_started = time.perf_counter()
                other = client.post(segment, content=photo, headers={"Content-Type": "image/jpeg"})
                other_s = time.perf_counter() - other_started
                response = large.result()
                found[name] = {
                    "classify_status": response.status_code,
                    "classify_s": round(time.perf_counter() - started, 2),
                    "segment_status": other.status_code,
                    "segment_s": round(other_s, 3),
                }
    return found


def overlays(base_url: str, segment: str, bomb: bytes, count: int = 32) -> dict:
    """Finding 2: ``count`` overlays of the large PNG at once."""
    with httpx.Client(base_url=base_url, timeout=CLIENT_TIMEOUT_S) as client:

        def post(_) -> int:
            url = f"{segment}?overlay=true"
            return client.post(url, content=bomb, headers={"Content-Type": "image/png"}).status_code

        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            statuses = list(pool.map(post, range(count)))
    return {str(s): statuses.count(s) for s in sorted(set(statuses))}


def measure(args: argparse.Namespace) -> dict:
    jpegs = photo_jpegs()
    bomb = bomb_png()
    log = args.workdir / "robustness-kerve.log"
    with running_service(args.models_dir, log) as (base_url, process):
        classifier = model_listing(base_url, args.classifier)
        classify = classifier["endpoints"]["task"]
        segment = task_path(base_url, args.segmenter)
        batching = next(v["batching"] for v in classifier["versions"] if v.get("batching"))
        timeout_ms = batching["timeout_ms"]
        idle_rss = tree_rss_bytes(process)
        capacity = run_load(
            base_url + classify, jpegs, {"Content-Type": "image/jpeg"}, 32, 10, 3
        ).throughput
        with PeakMemory(process) as rss:
            loaded = overload(base_url + classify, jpegs, args.overload * capacity, args.seconds)
        loaded["peak_rss_mb"] = round(rss.peak / 2**20)
        found_isolation = isolation(base_url, classify, segment, jpegs[0], bomb)
        with PeakMemory(process) as rss:
            overlay_statuses = overlays(base_url, segment, bomb)
        return {
            "machine": machine_description(),
            "classifier": args.classifier,
            "segmenter": args.segmenter,
            "timeout_ms": timeout_ms,
            "idle_rss_mb": round(idle_rss / 2**20),
            "capacity_per_s": round(capacity, 1),
            "overload_factor": args.overload,
            "overload": loaded,
            "isolation": found_isolation,
            "overlays": {"statuses": overlay_statuses, "peak_rss_mb": round(rss.peak / 2**20)},
        }


def section(found: dict, command: str) -> str:
    o = found["overload"]
    s = o["statuses"]
    iso = found["isolation"]
    ov = found["overlays"]
    budget_rss = 2 * found["idle_rss_mb"]
    others = {k: v for k, v in s.items() if k not in ("200", "503", "504")}
    lines = [
        f"`{command}` on {found['machine']}.",
        "",
        f"Capacity of `{found['classifier']}` (32 closed-loop clients): "
        f"**{found['capacity_per_s']} images/s**; open-loop at {found['overload_factor']}x "
        f"that, {o['rate_per_s']} requests/s for {o['seconds']:g} s ({o['sent']} sent):",
        "",
        "| measure | value | target |",
        "|---|---:|---|",
        f"| 200 / 503 / 504 | {s.get('200', 0)} / {s.get('503', 0)} / {s.get('504', 0)} "
        f"| no other status, no failed connection |",
        f"| other (0: connection failed) | {others or 'none'} | none |",
        f"| accepted per second | {o['accepted_per_s']} | about the capacity |",
        f"| accepted p50 / p99 ms | {o['accepted_p50_ms']} / {o['accepted_p99_ms']} "
        f"| p99 within timeout_ms ({found['timeout_ms']:g}) |",
        f"| 503 p50 / p99 ms, at the client | {o['refused_p50_ms']} / {o['refused_p99_ms']} "
        "| p99 50 |",
        f"| 503 p99 ms in the server (histogram bound) | "
        f"{o['refused_server_p99_ms_at_most']} | p99 50 |",
        f"| `/healthz` p50 / p99 / max ms ({o['healthz_probes']} probes) | "
        f"{o['healthz_p50_ms']} / {o['healthz_p99_ms']} / {o['healthz_max_ms']} | p99 100 |",
        f"| peak RSS MB (idle {found['idle_rss_mb']}) | {o['peak_rss_mb']} | |",
        f"| load generator's CPU, % of a core (same machine) | {o['client_cpu_percent']} | |",
        "",
        "Isolation (issue 22, findings 1 and 2):",
        "",
        "| check | result | target |",
        "|---|---|---|",
    ]
    for name, row in iso.items():
        lines.append(
            f"| {name} of {BOMB_SIDE}x{BOMB_SIDE} to the classifier, a photo to the segmenter "
            f"1 s later | classify {row['classify_status']} in {row['classify_s']} s; segment "
            f"{row['segment_status']} in {row['segment_s']} s | segment within 2 s |"
        )
    statuses = ", ".join(f"{n}x {s}" for s, n in ov["statuses"].items())
    lines.append(
        f"| 32 overlays of that PNG at once | {statuses}; peak RSS {ov['peak_rss_mb']} MB | "
        f"peak RSS within 2x idle ({budget_rss} MB) |"
    )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.robustness", description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--classifier", default="imagenet-classifier")
    parser.add_argument("--segmenter", default="segmenter")
    parser.add_argument("--overload", type=float, default=5.0, help="times the capacity")
    parser.add_argument("--seconds", type=float, default=60.0, help="of open-loop overload")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--docs", type=Path, help="fill its robustness section")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    found = measure(args)
    (args.workdir / "robustness.json").write_text(json.dumps(found, indent=2))
    command = f"python -m bench.robustness --overload {args.overload:g} --seconds {args.seconds:g}"
    text = section(found, command)
    print(text)
    if args.docs:
        report.update_docs(args.docs, text, marker="robustness")
    return found


if __name__ == "__main__":
    main()
