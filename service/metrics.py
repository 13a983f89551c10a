"""Every Prometheus collector the service exports, in one place.

Collectors live on a ``Metrics`` object with its own registry, so that each app
(and each test) has its own counters. Under several workers the CLI sets
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` aggregates the workers' files.
"""

from __future__ import annotations

import dataclasses
import os

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

MODEL_LABELS = ("model", "version")
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.request_latency = Histogram(
            "kerve_request_duration_seconds",
            "HTTP request latency, end to end in the server.",
            ("route", "task", "method", "status", *MODEL_LABELS),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "kerve_requests",
            "HTTP requests answered, by status.",
            ("route", "task", "status", *MODEL_LABELS),
            registry=registry,
        )
        self.in_flight = Gauge(
            "kerve_requests_in_flight",
            "HTTP requests being served (health checks and /metrics excluded).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "kerve_queue_wait_seconds",
            "Time a request waited in the batch queue.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "kerve_batch_size",
            "Samples per model call (before padding).",
            MODEL_LABELS,
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.inference_time = Histogram(
            "kerve_inference_seconds",
            "Time of one batched model call.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.preprocess_time = Histogram(
            "kerve_preprocess_seconds",
            "Time to turn one request into model samples.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.postprocess_time = Histogram(
            "kerve_postprocess_seconds",
            "Time to turn model outputs into one response.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "kerve_queue_depth",
            "Samples waiting in the batch queue.",
            MODEL_LABELS,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "kerve_rejected",
            "Requests refused with 503 because the queue was full.",
            MODEL_LABELS,
            registry=registry,
        )
        self.timeouts = Counter(
            "kerve_timeouts",
            "Requests answered 504 because their deadline passed.",
            MODEL_LABELS,
            registry=registry,
        )
        self.pixels_in_flight = Gauge(
            "kerve_pixels_in_flight",
            "Decoded pixels held by the requests in flight (SERVE_MAX_PIXELS_IN_FLIGHT).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.model_loaded = Gauge(
            "kerve_model_loaded",
            "1 while a model version is loaded and serving.",
            MODEL_LABELS,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.engine_info = Gauge(
            "kerve_model_engine_info",
            "1 while a model version serves on this engine, precision and Keras backend.",
            [*MODEL_LABELS, "engine", "precision", "backend"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.load_failures = Counter(
            "kerve_model_load_failures",
            "Failed attempts to load a model version.",
            MODEL_LABELS,
            registry=registry,
        )
        self.load_time = Histogram(
            "kerve_model_load_seconds",
            "Time to load and warm up a model version.",
            MODEL_LABELS,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )

    def for_model(self, name: str, version: int) -> ModelMetrics:
        labels = {"model": name, "version": str(version)}
        return ModelMetrics(
            queue_wait=self.queue_wait.labels(**labels),
            batch_size=self.batch_size.labels(**labels),
            inference_time=self.inference_time.labels(**labels),
            preprocess_time=self.preprocess_time.labels(**labels),
            postprocess_time=self.postprocess_time.labels(**labels),
            queue_depth=self.queue_depth.labels(**labels),
            rejected=self.rejected.labels(**labels),
            timeouts=self.timeouts.labels(**labels),
            loaded=self.model_loaded.labels(**labels),
        )

    def exposition(self) -> bytes:
        """The text format for ``GET /metrics``."""
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return prometheus_client.generate_latest(registry)
        return prometheus_client.generate_latest(self.registry)


@dataclasses.dataclass(frozen=True)
class ModelMetrics:
    """The collectors of one model version, labels already bound."""

    queue_wait: Histogram
    batch_size: Histogram
    inference_time: Histogram
    preprocess_time: Histogram
    postprocess_time: Histogram
    queue_depth: Gauge
    rejected: Counter
    timeouts: Counter
    loaded: Gauge


CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
