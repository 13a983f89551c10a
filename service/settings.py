"""Service settings: one pydantic-settings class, read from ``SERVE_*`` variables."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

import pydantic
import pydantic_settings


class BatchingOverride(pydantic.BaseModel):
    """Batching knobs that replace a manifest's defaults (unset ones are kept)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    max_batch_size: int | None = pydantic.Field(default=None, ge=1, le=1024)
    max_delay_ms: float | None = pydantic.Field(default=None, ge=0)
    max_queue: int | None = pydantic.Field(default=None, ge=1)
    timeout_ms: float | None = pydantic.Field(default=None, gt=0)


EngineName = Literal["auto", "keras", "openvino", "onnxruntime"]


class Settings(pydantic_settings.BaseSettings):
    model_config = pydantic_settings.SettingsConfigDict(env_prefix="SERVE_", extra="ignore")

    models_dir: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"

    # Repository
    poll_interval_s: float = pydantic.Field(default=5.0, ge=0)  # 0 disables hot reload
    versions_loaded: int = pydantic.Field(default=2, ge=0)  # newest N per model; 0 = all
    # Default model per task for /v1/<task>; unset means the first model of that task.
    default_models: dict[str, str] = {}

    # Batching: `batching` applies to every model, `model_batching` to one by name.
    batching: BatchingOverride = BatchingOverride()
    model_batching: dict[str, BatchingOverride] = {}
    # Engines (service/engines): `auto` exports each model at load to the compiled engines
    # installed and keeps the fastest whose outputs agree with Keras; a name forces one.
    engine: EngineName = "auto"
    model_engines: dict[str, EngineName] = {}  # per model name, like model_batching
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16 only where the CPU has it
    # Scales each task's agreement tolerance (0: a compiled engine must match Keras exactly).
    engine_tolerance: float = pydantic.Field(default=1.0, ge=0)
    # Exported and compiled engines, by model file hash; empty: none (export at every load).
    engine_cache_dir: Path | None = pydantic.Field(
        default_factory=lambda: (
            Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "kerve" / "engines"
        )
    )

    @pydantic.field_validator("engine_cache_dir", "api_keys_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if value == "" else value

    # Image decoding threads. Half the cores at most: decoding competes with the
    # model's own thread pool, and on 2 cores a second decoder cost 17% throughput
    # (docs/BENCHMARKS.md, "Earlier measurements").
    preprocess_threads: int = pydantic.Field(
        default_factory=lambda: max(1, min(4, (os.cpu_count() or 1) // 2)), ge=1
    )

    # Request limits
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_images_per_request: int = 64
    # Decoded pixels the requests in flight may hold at once, all models together: inputs
    # and the images made from them (service/admission.py). A request past it waits for
    # nothing: 503 while others hold it, 413 if it alone needs more. The default keeps
    # the demo zoo's server under about twice its idle memory (docs/BENCHMARKS.md).
    max_pixels_in_flight: int = pydantic.Field(default=200_000_000, ge=1)

    # API keys (service/auth.py): with any key configured, every route but the probes and
    # the page's and docs' static files needs one (Authorization: Bearer or X-API-Key).
    api_keys: str = ""  # comma-separated keys, plain or sha256:<64 hex digits>
    # One key a line, sha256:<64 hex> (`kerve api-key` prints one) or plain; # comments.
    api_keys_file: Path | None = None
    metrics_need_key: bool = True  # false: a Prometheus without credentials can scrape

    retry_after_s: int = 1
    # On SIGTERM: seconds to finish the requests in flight; those still running then get
    # a 503. Kubernetes' terminationGracePeriodSeconds must exceed it (deploy/k8s).
    graceful_shutdown_s: float = pydantic.Field(default=30.0, gt=0)

    # Connections (service/connections.py): how long and how much a client may hold a
    # connection without finishing a request. Behind a proxy that buffers requests
    # (nginx does by default) these rarely trip; raise them for slow clients.
    # A request's head (request line and headers) must arrive within this many seconds of
    # its first byte (of the connection, for a first request), else 408 and close.
    header_timeout_s: float = pydantic.Field(default=10.0, gt=0)
    # A body must arrive within this of its headers, else 408 and close. 60 s carries a
    # full 16 MiB body (max_body_bytes) at 2.3 Mbit/s and a 1 MiB photo at 140 kbit/s.
    body_timeout_s: float = pydantic.Field(default=60.0, gt=0)
    # Request line plus headers, else 431 and close. nginx's default allows 32 KiB (4
    # buffers of 8 KiB), so anything nginx passes fits; a bearer token is about 1 KiB.
    max_header_bytes: int = pydantic.Field(default=32 * 1024, ge=1024)
    # Connections served at once, per worker: one opened beyond them gets a JSON 503 with
    # Retry-After to its requests and is closed, as is a request beyond this many running;
    # the probes and /metrics are exempt. Below the common 1024 open-file soft limit, so
    # a worker answers 503 rather than failing accept(); far above what the batching
    # queues hold. 0: no limit.
    max_connections: int = pydantic.Field(default=1000, ge=0)

    # GPUs, applied by `python -m service` before the backend starts.
    # Which GPUs the models use, as CUDA indices ("0", "0,1"); "" hides every GPU;
    # unset leaves CUDA_VISIBLE_DEVICES as it is.
    gpu_devices: str | None = pydantic.Field(default=None, pattern=r"^(\d+(,\d+)*)?$")
    # Take GPU memory as models need it instead of all of it at start, so other
    # processes (a second worker, a sidecar) fit on the same GPU.
    gpu_memory_growth: bool = True


@functools.cache
def get_settings() -> Settings:
    return Settings()
