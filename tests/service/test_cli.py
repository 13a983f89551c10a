"""`python -m service` as an operator runs it: a real uvicorn process on a free port."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench.server import free_port, running_process
from tests.helpers import encode, metric_total, solid, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_cli_serves_with_json_logs_and_request_ids(repository, tmp_path):
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, "SERVE_POLL_INTERVAL_S": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [
        sys.executable,
        "-m",
        "service",
        "--models-dir",
        str(repository),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)
        response = httpx.post(
            f"{base}/v1/classify",
            content=encode(solid((10, 10, 240)), "JPEG"),
            headers={"Content-Type": "image/jpeg", "X-Request-ID": "cli-test-42"},
        )
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "cli-test-42"
        assert response.json()["predictions"][0][0]["label"] == "blue"
    finally:
        server.terminate()  # SIGTERM: graceful shutdown
        assert server.wait(timeout=30) == 0
    records = [
        json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    access = [r for r in records if r.get("request_id") == "cli-test-42"]
    assert access and access[0]["status"] == 200 and access[0]["model"] == "colours"
    messages = [r["message"] for r in records]
    assert any("is serving" in m for m in messages)
    assert "Application shutdown complete." in messages


def test_sigterm_answers_requests_in_flight_then_exits_0(repository, tmp_path):
    """What an orchestrator relies on when it stops a replica: on SIGTERM the server
    stops taking connections, answers every request it has, then exits with 0."""
    buffer = io.BytesIO()  # 36 megapixels: about a second to decode and resize each
    Image.new("RGB", (6000, 6000), (200, 0, 0)).save(buffer, "PNG", compress_level=1)
    image = buffer.getvalue()
    arguments = ["-m", "service", "--models-dir", str(repository), "--poll-interval", "0"]
    with running_process(arguments, tmp_path / "server.log") as (base_url, process):

        def classify() -> httpx.Response:
            return httpx.post(f"{base_url}/v1/classify", content=image,
                              headers={"Content-Type": "image/png"}, timeout=60)  # fmt: skip

        def held() -> float:
            text = httpx.get(f"{base_url}/metrics").text
            return metric_total(text, "kerve_requests_in_flight")

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            in_flight = [pool.submit(classify) for _ in range(4)]
            wait_until(lambda: held() == 4, interval_s=0.02)  # the server holds all four
            process.send_signal(signal.SIGTERM)
            # uvicorn logs this after closing its listening socket. A fixed sleep raced
            # the signal: a busy event loop may take longer to close it, and a connection
            # made before then waits in the backlog and is reset (httpx.ReadError).
            log = (tmp_path / "server.log").read_text
            wait_until(lambda: "Waiting for connections to close" in log(), interval_s=0.02)
            with pytest.raises(httpx.ConnectError):  # no new connections while it drains
                httpx.get(f"{base_url}/healthz")
            assert not all(future.done() for future in in_flight)
            responses = [future.result() for future in in_flight]
        assert [r.status_code for r in responses] == [200] * 4
        assert all(r.json()["predictions"][0][0]["label"] == "red" for r in responses)
        assert process.wait(timeout=30) == 0
    assert "Application shutdown complete." in (tmp_path / "server.log").read_text()


def test_gpu_settings_become_the_backends_variables():
    from service.__main__ import gpu_environment
    from service.settings import Settings

    default = gpu_environment(Settings())
    assert default == {
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    chosen = gpu_environment(Settings(gpu_devices="1,3", gpu_memory_growth=False))
    assert chosen == {
        "TF_FORCE_GPU_ALLOW_GROWTH": "false",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
        "CUDA_VISIBLE_DEVICES": "1,3",
    }
    assert gpu_environment(Settings(gpu_devices=""))["CUDA_VISIBLE_DEVICES"] == ""  # no GPU
    with pytest.raises(ValueError, match="gpu_devices"):
        Settings(gpu_devices="cuda:0")
