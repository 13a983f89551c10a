"""`python -m service`: start the Kerve HTTP server under uvicorn."""

from __future__ import annotations

import argparse
import os
import signal
import tempfile

import uvicorn

from service.logs import logging_config
from service.settings import Settings, get_settings


def parse_args(
    argv: list[str] | None = None, prog: str = "python -m service", epilog: str | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the models of a Kerve repository over HTTP. Every option can "
        "also be set as a SERVE_* environment variable (SERVE_MODELS_DIR, SERVE_PORT, ...).",
        epilog=epilog,
    )
    parser.add_argument("--models-dir", help="model repository folder (default: models)")
    parser.add_argument("--host", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default: 8000)")
    parser.add_argument("--workers", type=int, help="worker processes, each loads every model")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--poll-interval",
        type=float,
        dest="poll_interval_s",
        help="seconds between repository scans; 0 turns hot reload off",
    )
    return parser.parse_args(argv)


def main(
    argv: list[str] | None = None, prog: str = "python -m service", epilog: str | None = None
) -> None:
    args = parse_args(argv, prog, epilog)
    os.environ.update(settings_environment(args))  # workers build their app from it
    settings = get_settings()
    if settings.workers > 1:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="kerve-metrics-"))
    os.environ.update(gpu_environment(settings))
    # uvicorn stops taking requests on SIGTERM, answers those in flight, then raises
    # the signal again for whoever handled it before: here, a clean exit with code 0
    # (a container's orchestrator reads a signal death as a crash).
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=logging_config(settings.log_level),
        access_log=False,  # the service writes its own access log, with request ids
        loop="uvloop",
        # uvicorn's httptools protocol with header and body deadlines, a header size limit
        # and SERVE_MAX_CONNECTIONS (service/connections.py); named, so each worker imports
        # it and reads its settings.
        http="service.connections:KerveHttpToolsProtocol",
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )


def settings_environment(args: argparse.Namespace) -> dict[str, str]:
    """The options given, as the SERVE_* variables that Settings reads."""
    return {
        f"SERVE_{key.upper()}": str(value) for key, value in vars(args).items() if value is not None
    }


def gpu_environment(settings: Settings) -> dict[str, str]:
    """The variables that put the GPU settings in force for TensorFlow, JAX and PyTorch.

    Set before the backend is imported, in this process and so in every worker.
    """
    environment = {
        "TF_FORCE_GPU_ALLOW_GROWTH": str(settings.gpu_memory_growth).lower(),
        # JAX takes 75% of the GPU at start unless told not to preallocate.
        "XLA_PYTHON_CLIENT_PREALLOCATE": str(not settings.gpu_memory_growth).lower(),
    }
    if settings.gpu_devices is not None:
        environment["CUDA_VISIBLE_DEVICES"] = settings.gpu_devices
    return environment


def _exit_after_shutdown(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()
