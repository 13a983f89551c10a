"""A closed-loop HTTP load generator: N clients, each sends its next request when
the previous one is answered, for a fixed time. Reports throughput and latency."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import resource
import time

import httpx
import numpy as np


@dataclasses.dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    errors: int
    latencies_s: list[float]
    client_cpu_percent: float = 0.0  # of one core, over the whole run (warm-up included)
    error_statuses: dict[int, int] = dataclasses.field(default_factory=dict)  # status: count

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")
        )

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "throughput_per_s": round(self.throughput, 2),
            "mean_ms": round(1000 * float(np.mean(self.latencies_s)), 1)
            if self.latencies_s
            else None,
            "p50_ms": round(self.percentile_ms(50), 1),
            "p95_ms": round(self.percentile_ms(95), 1),
            "p99_ms": round(self.percentile_ms(99), 1),
            "client_cpu_percent": round(self.client_cpu_percent, 1),
            "error_statuses": {str(s): n for s, n in sorted(self.error_statuses.items())},
        }


def request_bytes(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, whether the server closes the connection after it)."""
    status = int((await reader.readline()).split()[1])
    length, closing = None, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            closing = value.strip().lower() == b"close"
    if length is None:
        raise RuntimeError("the load generator needs responses with a Content-Length")
    return status, await reader.readexactly(length), closing


async def _client(url, requests, stop_at, warm_until, result: LoadResult) -> None:
    """One closed-loop client on one keep-alive connection."""
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        for request in itertools.cycle(requests):
            started = time.perf_counter()
            if started >= stop_at:
                return
            writer.write(request)
            status, _, _ = await read_response(reader)
            finished = time.perf_counter()
            if started < warm_until:
                continue  # warm-up requests are not counted
            if status == 200:
                result.requests += 1
                result.latencies_s.append(finished - started)
            else:
                result.errors += 1
                result.error_statuses[status] = result.error_statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _run(url, bodies, headers, concurrency, seconds, warmup_s) -> LoadResult:
    # A bare HTTP/1.1 client on asyncio streams: it costs the shared CPU a small
    # fraction of what a full client library does, so the server gets the machine.
    target = httpx.URL(url)
    path = target.raw_path.decode()
    requests = [request_bytes(target.host, path, body, headers) for body in bodies]
    result = LoadResult(concurrency, seconds, 0, 0, [])
    now = time.perf_counter()
    warm_until, stop_at = now + warmup_s, now + warmup_s + seconds
    cpu_before = cpu_seconds()
    await asyncio.gather(
        *(
            _client(
                target,
                requests[i % len(requests) :] + requests[: i % len(requests)],
                stop_at,
                warm_until,
                result,
            )
            for i in range(concurrency)
        )
    )
    wall = time.perf_counter() - now
    result.client_cpu_percent = 100 * (cpu_seconds() - cpu_before) / wall
    return result


def run_load(
    url: str,
    bodies: list[bytes],
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    warmup_s: float = 3.0,
) -> LoadResult:
    """Drive ``url`` with ``concurrency`` closed-loop clients for ``seconds``."""
    return asyncio.run(_run(url, bodies, headers, concurrency, seconds, warmup_s))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
