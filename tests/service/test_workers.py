"""``--workers N``: every worker loads every model, and ``/metrics`` adds up all of
them, whichever worker answers the scrape (Prometheus multiprocess mode)."""

from __future__ import annotations

import time

import httpx

from bench.server import running_process
from tests.helpers import encode, metric_total, solid

WORKERS = 2


def test_metrics_add_up_every_worker(repository, tmp_path):
    arguments = ["-m", "service", "--models-dir", str(repository), "--workers", str(WORKERS),
                 "--poll-interval", "0", "--log-level", "warning"]  # fmt: skip
    with running_process(arguments, tmp_path / "server.log") as (base_url, process):
        deadline = time.monotonic() + 120
        while (
            metric_total(httpx.get(f"{base_url}/metrics").text, "kerve_model_load_seconds_count")
            < 2
        ):
            assert time.monotonic() < deadline, "the workers did not all load the model"
            time.sleep(0.5)
        assert len(process.children()) >= WORKERS

        image = encode(solid((200, 0, 0)), "PNG")
        requests = 24
        for _ in range(requests):  # a new connection each: the kernel spreads them
            response = httpx.post(
                f"{base_url}/v1/classify", content=image, headers={"Content-Type": "image/png"}
            )
            assert response.json()["predictions"][0][0]["label"] == "red"

        for _ in range(6):  # whichever worker answers the scrape, the totals are the same
            text = httpx.get(f"{base_url}/metrics").text
            assert (
                metric_total(text, "kerve_requests_total", task="classify", status="200")
                == requests
            )
            assert metric_total(text, "kerve_batch_size_sum", model="colours") == requests
            assert metric_total(text, "kerve_model_load_seconds_count", model="colours") == WORKERS
            assert metric_total(text, "kerve_model_loaded", model="colours") == 1  # loaded: yes
