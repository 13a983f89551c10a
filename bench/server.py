"""Start a server (Kerve, or a system it is measured against) in a subprocess on a free
port, wait for it to be ready, and read its process tree's CPU and memory."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_service(models_dir: Path, log_path: Path, env: dict[str, str] | None = None):
    """Yield (base_url, psutil.Process) of a ready ``python -m service``; stop it afterwards."""
    arguments = ["--models-dir", str(models_dir), "--poll-interval", "0", "--log-level", "warning"]
    with running_process(["-m", "service", *arguments], log_path, env) as served:
        yield served


@contextlib.contextmanager
def running_process(
    arguments: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    ready: str = "/readyz",
    python: str = sys.executable,
):
    """Run ``python ARGUMENTS --port P`` until ``GET ready`` answers 200; yield
    (base_url, psutil.Process); then stop it and everything it started. ``python``: the
    interpreter of another virtual environment (a peer's)."""
    port = free_port()
    command = [python, *arguments, "--port", str(port)]
    environment = {**os.environ, **(env or {})}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    tree = psutil.Process(process.pid)
    try:
        _wait_ready(base_url + ready, process, log_path)
        yield base_url, tree
    finally:
        children = _children(tree)
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        for child in children:  # what a server started and did not stop (Ray's daemons)
            with contextlib.suppress(psutil.Error):
                child.kill()


def tree_cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU of a process and its living descendants."""
    total = 0.0
    for member in [process, *_children(process)]:
        with contextlib.suppress(psutil.Error):
            total += sum(member.cpu_times()[:2])
    return total


def tree_rss_bytes(process: psutil.Process) -> int:
    total = 0
    for member in [process, *_children(process)]:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def _children(process: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return process.children(recursive=True)
    return []


def _wait_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited; see {log_path}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"the server was not ready in {READY_TIMEOUT_S} s; see {log_path}")
