"""ModelRepository: scan, load, warm up, version and hot-reload the models.

The repository polls ``models/<name>/<version>/``. Per model it keeps the newest
``versions_loaded`` versions that load; a new version is loaded and warmed up on
a loader thread and only then made visible (an atomic swap on the event loop),
and a version leaving the policy is drained before it is dropped. A version that
fails to load is recorded with its error and retried only when its files change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import functools
import gc
import json
import logging
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import keras

import kerve_manifest
from service.admission import Admission
from service.batching import BatchConfig
from service.engines import EngineConfig
from service.errors import ModelNotFound, NotReady, VersionNotFound, WrongTask
from service.metrics import Metrics, ModelMetrics
from service.runtimes import RUNTIMES, Runtime
from service.settings import Settings

logger = logging.getLogger(__name__)
PENDING_FILE = kerve_manifest.PENDING_FILE  # a model still to come (ModelRepository.pending)


# Absolute paths (not URLs: no ':' or '/' before them) and pydantic's documentation links.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"]+/)+([^\s/'\"]+)")
_PYDANTIC_LINK = re.compile(r"\s*For further information visit https://errors\.pydantic\.dev/\S*")


def public_error(detail: str, models_dir: Path) -> str:
    """A load error as clients may read it (``/v1/models``, ``/readyz``): files named within
    the repository (``fashion/2/manifest.json``), no other absolute path (a file's name
    only), no library links. The server's log keeps the whole error."""
    for root in {str(models_dir.resolve()), str(models_dir.absolute())}:
        detail = detail.replace(root.rstrip("/") + "/", "")
    detail = _PYDANTIC_LINK.sub("", detail)
    return _ABSOLUTE_PATH.sub(r"\1", detail)


class VersionState(enum.StrEnum):
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"


@dataclasses.dataclass(eq=False)
class ModelVersion:
    name: str
    version: int
    path: Path
    signature: tuple  # sizes and mtimes of the version's files when it was loaded
    state: VersionState = VersionState.LOADING
    runtime: Runtime | None = None
    error: str | None = None
    loaded_at: float | None = None


class ModelRepository:
    def __init__(self, settings: Settings, metrics: Metrics, admission: Admission) -> None:
        self.settings = settings
        self.root = Path(settings.models_dir)
        self._metrics = metrics
        self._admission = admission
        self._models: dict[str, dict[int, ModelVersion]] = {}
        # One load at a time: loading and warm-up are CPU-heavy and must not
        # starve the versions that are serving.
        self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="loader")
        self._refresh_lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None
        self.initial_load_done = False
        self._required: frozenset[str] = frozenset()  # what readiness waits for
        self._pending: dict[str, dict] = {}  # models still to come, as of the last scan
        self._refreeze = False  # a version left: collect it, then freeze the heap again

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Begin the initial load and the polling loop, in the background."""
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="repository")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for versions in self._models.values():
            for entry in list(versions.values()):
                if entry.runtime is not None:
                    await entry.runtime.stop()
        self._loader.shutdown(wait=False, cancel_futures=True)
        gc.unfreeze()

    async def _poll(self) -> None:
        await self.refresh()
        self._required = frozenset(self._models)
        self.initial_load_done = True
        logger.info("initial model load finished", extra={"models": self.summary()})
        while self.settings.poll_interval_s > 0:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a bad scan must not end hot reload
                logger.exception("repository refresh failed")

    # -- scanning and loading ------------------------------------------------------
    async def refresh(self) -> None:
        """Bring the loaded versions in line with what is on disk, once."""
        async with self._refresh_lock:
            on_disk = self._scan()
            self._pending = self._scan_pending()
            for name in sorted(on_disk.keys() | self._models.keys()):
                await self._sync_model(name, on_disk.get(name, {}))
            if self._refreeze:
                self._refreeze = False
                _freeze_heap()

    def _scan_pending(self) -> dict[str, dict]:
        """The notes of the models still to come, read once a scan (listings and probes
        read this snapshot, not the disk)."""
        notes = {}
        for path in sorted(self.root.glob(f"*/{PENDING_FILE}")) if self.root.is_dir() else ():
            if path.parent.name.startswith("."):
                continue
            try:
                text = path.read_text(errors="replace")
                note = json.loads(text)
            except OSError:
                continue  # published and removed meanwhile
            except ValueError:
                note = None
            notes[path.parent.name] = (
                note if isinstance(note, dict) else {"reason": " ".join(text.split())[:500]}
            )
        return notes

    def _scan(self) -> dict[str, dict[int, Path]]:
        if not self.root.is_dir():
            return {}
        found = {}
        for model_dir in sorted(self.root.iterdir()):
            if model_dir.is_dir() and not model_dir.name.startswith("."):
                versions = kerve_manifest.list_versions(model_dir)
                found[model_dir.name] = {v: model_dir / str(v) for v in versions}
        return found

    async def _sync_model(self, name: str, on_disk: dict[int, Path]) -> None:
        versions = self._models.setdefault(name, {})
        keep = self.settings.versions_loaded or len(on_disk)
        serving: list[int] = []
        for version in sorted(on_disk, reverse=True):
            if len(serving) >= keep:
                break
            entry = versions.get(version)
            signature = _signature(on_disk[version])
            if entry is None or (
                entry.state is VersionState.FAILED and entry.signature != signature
            ):
                entry = await self._load(name, version, on_disk[version], signature)
            if entry.state is VersionState.AVAILABLE:
                serving.append(version)
        for version, entry in list(versions.items()):
            if entry.state is VersionState.AVAILABLE and version not in serving:
                await self._unload(entry)
            elif entry.state is VersionState.FAILED and version not in on_disk:
                del versions[version]
        if not versions and not on_disk:
            del self._models[name]

    async def _load(self, name: str, version: int, path: Path, signature: tuple) -> ModelVersion:
        entry = ModelVersion(name, version, path, signature)
        self._models[name][version] = entry
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            entry.runtime = await loop.run_in_executor(
                self._loader, self._build_runtime, name, version, path
            )
        except Exception as error:  # noqa: BLE001 - any failure is this version's alone
            entry.state = VersionState.FAILED
            detail = f"{type(error).__name__}: {error}"
            entry.error = public_error(detail, self.settings.models_dir)[:500]
            self._metrics.load_failures.labels(model=name, version=str(version)).inc()
            logger.error("model %s version %d failed to load: %s", name, version, detail)
            return entry
        entry.runtime.start(self._admission)
        _freeze_heap()
        entry.state = VersionState.AVAILABLE
        entry.loaded_at = time.time()
        elapsed = time.perf_counter() - started
        self._metrics.load_time.labels(model=name, version=str(version)).observe(elapsed)
        report = entry.runtime.engine_report
        self._engine_info(entry).set(1)
        logger.info(
            "model %s version %d is serving on %s (loaded in %.1f s): %s",
            name, version, report.engine, elapsed, report.reason,
        )  # fmt: skip
        return entry

    def _build_runtime(self, name: str, version: int, path: Path) -> Runtime:
        """Read, load and warm up one version (on the loader thread)."""
        return load_runtime(
            path,
            name,
            version,
            batching=functools.partial(self._batch_config, name),
            metrics=self._metrics.for_model(name, version),
            max_image_pixels=self.settings.max_image_pixels,
            engine=self._engine_config(name),
        )

    def _engine_config(self, name: str) -> EngineConfig:
        settings = self.settings
        return EngineConfig(
            engine=settings.model_engines.get(name, settings.engine),
            precision=settings.precision,
            tolerance=settings.engine_tolerance,
            cache_dir=settings.engine_cache_dir or None,
        )

    def _batch_config(self, name: str, manifest: kerve_manifest.BaseManifest) -> BatchConfig:
        knobs = manifest.batching.model_dump()
        for override in (self.settings.batching, self.settings.model_batching.get(name)):
            if override is not None:
                knobs.update(override.model_dump(exclude_none=True))
        return BatchConfig(**knobs)

    async def _unload(self, entry: ModelVersion) -> None:
        entry.state = VersionState.UNLOADING  # no longer handed to new requests
        logger.info("unloading model %s version %d", entry.name, entry.version)
        if entry.runtime is not None:
            await entry.runtime.stop()
            self._engine_info(entry).set(0)
        del self._models[entry.name][entry.version]
        gc.unfreeze()  # the model's objects, frozen with the rest, can be collected again
        self._refreeze = True  # once the scan is over and nothing refers to them

    def _engine_info(self, entry: ModelVersion):
        report = entry.runtime.engine_report
        return self._metrics.engine_info.labels(
            model=entry.name,
            version=str(entry.version),
            engine=report.engine,
            precision=report.precision,
            backend=report.backend,
        )

    # -- lookup ------------------------------------------------------------------------
    def get(self, name: str, version: int | None = None) -> Runtime:
        """The runtime serving ``name`` (newest available version, or the one asked for)."""
        versions = self._models.get(name)
        if not versions:
            if not self.initial_load_done:
                raise NotReady("models are still loading", self.settings.retry_after_s)
            raise ModelNotFound(f"there is no model named {name!r}")
        if version is None:
            available = [e for e in versions.values() if e.state is VersionState.AVAILABLE]
            if not available:
                raise NotReady(
                    f"model {name!r} has no version available", self.settings.retry_after_s
                )
            return max(available, key=lambda e: e.version).runtime
        entry = versions.get(version)
        if entry is None:
            raise VersionNotFound(f"model {name!r} has no version {version} loaded")
        if entry.state is VersionState.LOADING:
            raise NotReady(
                f"model {name!r} version {version} is loading", self.settings.retry_after_s
            )
        if entry.state is not VersionState.AVAILABLE:
            detail = f": {entry.error}" if entry.error else ""
            raise VersionNotFound(f"model {name!r} version {version} is {entry.state}{detail}")
        return entry.runtime

    def get_for_task(self, task: str, name: str | None, version: int | None) -> Runtime:
        """The runtime for a task route: the named model, or the task's default model."""
        name = name or self.settings.default_models.get(task) or self._first_model_for(task)
        runtime = self.get(name, version)
        if runtime.task != task:
            raise WrongTask(f"model {name!r} serves {runtime.task}, not {task}")
        return runtime

    def _first_model_for(self, task: str) -> str:
        """The task's default: the first by name whose manifest says ``default_for_task``,
        else (once the first load is done) the first by name."""
        serving = [
            (not e.runtime.manifest.default_for_task, name)
            for name in sorted(self._models)
            for e in self._models[name].values()
            if e.runtime is not None and e.runtime.task == task
        ]
        if serving:
            not_default, name = min(serving)
            # While the first load runs, the default may be still to load: wait for it
            # rather than answer from another model.
            if not not_default or self.initial_load_done:
                return name
        if not self.initial_load_done:
            raise NotReady("models are still loading", self.settings.retry_after_s)
        raise ModelNotFound(f"no {task} model is loaded")

    # -- reporting -------------------------------------------------------------------
    def versions(self, name: str) -> list[ModelVersion]:
        if name not in self._models:
            if self.pending(name) is not None:
                return []
            raise ModelNotFound(f"there is no model named {name!r}")
        return sorted(self._models[name].values(), key=lambda e: e.version, reverse=True)

    def model_names(self) -> list[str]:
        """The loaded models and those announced as coming (a PENDING file, see pending)."""
        return sorted(self._models.keys() | self._pending.keys())

    def pending(self, name: str) -> dict | None:
        """What ``models/<name>/PENDING`` said at the last scan of a model still to come (the
        demo zoo writes one while it trains the model, and leaves it saying why when it skips
        or fails it): its JSON object ({"reason": ..., "expected_s": ...}), or None. Not
        loaded, and readiness does not wait for it."""
        return self._pending.get(name)

    def is_ready(self) -> bool:
        """Ready once the first load is done and every model found by it serves a version.

        A model published later does not count until the next start: while it loads,
        or if it fails, this process still serves everything it served, and replicas
        that share a model volume must not all leave their load balancer at once.
        A new replica waits for every model, so a model that cannot load holds up a
        rollout instead of reaching clients.
        """
        return self.initial_load_done and all(
            any(e.state is VersionState.AVAILABLE for e in self._models[name].values())
            for name in self._required
            if name in self._models
        )

    def summary(self) -> dict[str, dict[str, str]]:
        return {
            name: {str(v): e.state.value for v, e in sorted(versions.items())}
            for name, versions in self._models.items()
        }


def load_runtime(
    path: Path,
    name: str,
    version: int,
    *,
    batching: Callable[[kerve_manifest.BaseManifest], BatchConfig],
    metrics: ModelMetrics,
    max_image_pixels: int,
    engine: EngineConfig | None = None,
) -> Runtime:
    """Read, load and warm up the model version in ``path``; ``batching`` picks its
    batch settings from its manifest."""
    manifest = kerve_manifest.read_manifest(path)
    runtime_class = RUNTIMES.get(manifest.task)
    if runtime_class is None:
        raise ValueError(f"no runtime serves the task {manifest.task!r} yet")
    model_path = path / kerve_manifest.MODEL_FILE
    if not zipfile.is_zipfile(model_path):  # Keras would call this "File not found"
        raise ValueError(f"{model_path} is missing or not a .keras archive (a zip file)")
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    runtime_class.validate(model, manifest)
    runtime = runtime_class(
        name,
        version,
        model,
        manifest,
        batching=batching(manifest),
        metrics=metrics,
        max_image_pixels=max_image_pixels,
        engine_config=engine,
        model_path=model_path,
    )
    runtime.warm_up()
    return runtime


def _freeze_heap() -> None:
    """Move what is alive now (the framework and the loaded models: 400,000 objects for
    TensorFlow and one EfficientNet) out of the garbage collector's sight. Otherwise every
    full collection walks all of it, and a request that allocates many lists (a JSON
    image of numbers: 50,000 of them) triggers several: :predict of a 224x224x3 image
    took 188 ms to parse, 43 ms with the heap frozen. Unloading a version unfreezes the
    heap and collects its model's objects before freezing again."""
    gc.collect()
    gc.freeze()


def _signature(version_dir: Path) -> tuple:
    """What changes when a version's files are rewritten (None for a missing file)."""
    stats = []
    for filename in (kerve_manifest.MODEL_FILE, kerve_manifest.MANIFEST_FILE):
        try:
            stat = (version_dir / filename).stat()
            stats.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            stats.append(None)
    return tuple(stats)
