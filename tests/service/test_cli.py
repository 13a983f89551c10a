"""`python -m service` as an operator runs it: a real uvicorn process on a free port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.server import free_port
from tests.helpers import encode, solid

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
        # uvicorn re-raises the signal once it has shut down, so the code is -SIGTERM.
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
    records = [
        json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    access = [r for r in records if r.get("request_id") == "cli-test-42"]
    assert access and access[0]["status"] == 200 and access[0]["model"] == "colours"
    messages = [r["message"] for r in records]
    assert any("is serving" in m for m in messages)
    assert "Application shutdown complete." in messages
