"""`kerve serve --zoo`: serve first, train the demo zoo behind the server (a tiny fake zoo,
tests/fixtures/tiny_zoo.py), stop the training with the server; and the zoo without
Fashion-MNIST."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

import kerve_manifest
from bench.server import free_port
from tests.helpers import wait_until
from training.data import fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
TINY_ZOO = "tests.fixtures.tiny_zoo"


def environment(fashion_dir: Path, **more: str) -> dict[str, str]:
    return {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KERVE_ZOO_MODULE": TINY_ZOO,
        "FASHION_MNIST_DIR": str(fashion_dir),  # also keeps apt and the download out
        "PYTHONUNBUFFERED": "1",
        **more,
    }


def pending(models_dir: Path, name: str) -> dict | None:
    try:
        return json.loads((models_dir / name / "PENDING").read_text())
    except (OSError, ValueError):
        return None


def listing(url: str) -> dict[str, str] | None:
    """{name: "pending" or the newest version's state}, or None while the server starts."""
    try:
        models = httpx.get(f"{url}/v1/models").json()["models"]
    except (httpx.TransportError, ValueError):
        return None
    return {m["name"]: m["versions"][0]["state"] if m["versions"] else "pending" for m in models}


def test_the_zoo_trains_behind_the_server_and_stops_with_it(tmp_path):
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    for names in fashion_mnist.FILES.values():  # present, so beta (which "needs" it) is built
        for name in names:
            (fashion / name).touch()
    gate, models_dir = tmp_path / "gate", tmp_path / "models"
    gate.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "kerve_cli", "serve", "--zoo", "fast",
               "--models-dir", str(models_dir), "--port", str(port),
               "--poll-interval", "0.2", "--log-level", "warning"]  # fmt: skip
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, cwd=ROOT, env=environment(fashion, TINY_ZOO_GATE=str(gate)),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # the ImageNet classifier is published before serving; the rest is still to come
        # (listed from the first repository scan after the zoo announced it)
        seen = wait_until(
            lambda: (
                len(listing(url) or {}) == 4
                and listing(url).get("imagenet-classifier") == "AVAILABLE"
                and listing(url)
            ),
            120,
        )
        assert seen == {
            "imagenet-classifier": "AVAILABLE",
            "alpha": "pending",
            "beta": "pending",
            "gamma": "pending",
        }, log_path.read_text()
        assert pending(models_dir, "beta")["reason"].startswith("demo zoo: queued")
        wait_until(lambda: pending(models_dir, "alpha")["reason"].startswith("demo zoo: training"))
        zoo_pid = pending(models_dir, "alpha")["pid"]
        assert zoo_pid != server.pid

        # one by one, without a restart
        for name, after in (("alpha", "beta"), ("beta", "gamma")):
            (gate / name).touch()
            states = wait_until(lambda n=name: (listing(url) or {}).get(n) == "AVAILABLE"
                                and listing(url), 60)  # fmt: skip
            assert states[after] == "pending", (states, log_path.read_text())
        wait_until(lambda: pending(models_dir, "gamma")["reason"].startswith("demo zoo: training"))
        os.kill(zoo_pid, 0)  # training gamma

        # stopping the server stops the training
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, log_path.read_text()
        wait_until(lambda: not alive(zoo_pid), 10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert kerve_manifest.list_versions(models_dir / "gamma") == []
    assert pending(models_dir, "gamma")["reason"].startswith("interrupted")
    assert not (models_dir / "alpha" / "PENDING").exists()
    output = log_path.read_text()
    print(output)
    assert "zoo [1/3] alpha: training (fast profile)" in output
    assert "zoo [2/3] beta: published" in output
    assert "stopped the demo zoo" in output


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_without_fashion_mnist_the_zoo_skips_what_needs_it(tmp_path):
    empty, models_dir = tmp_path / "empty", tmp_path / "models"
    empty.mkdir()
    command = [sys.executable, "-m", "training.zoo", "--zoo-module", TINY_ZOO,
               "--models-dir", str(models_dir), "--only", "alpha,beta"]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=environment(empty), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    skip_lines = [line for line in result.stdout.splitlines() if "skipped" in line]
    assert len(skip_lines) == 1, result.stdout
    assert skip_lines[0].startswith("zoo: skipped beta: Fashion-MNIST")
    assert "apt-get install dataset-fashion-mnist" in skip_lines[0]
    assert kerve_manifest.list_versions(models_dir / "alpha") == [1]
    assert kerve_manifest.list_versions(models_dir / "beta") == []
    assert pending(models_dir, "beta")["reason"].startswith("skipped: Fashion-MNIST")
    assert "zoo [1/1] alpha: published" in result.stdout
