"""Which engine serves a version: Keras, or a compiled engine that agrees with it and is faster.

At load, after Keras has run every padded batch size, each installed compiled
engine (and precision) is tried: the model is exported to ONNX (cached by the
``.keras`` file's hash), compiled, run on probe samples and compared with Keras's
outputs by the task's own measure (``Runtime.agreement``), then timed at the same
batch sizes. ``auto`` keeps the fastest that agrees if it beats Keras; a named
engine is kept if it agrees, and the load fails otherwise. Every trial and the
reason for the choice are reported in ``/v1/models`` and the log.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras

from service.engines import COMPILED, CompiledEngine, Engine, EngineConfig, hardware
from service.engines.onnx_export import exported_onnx

if TYPE_CHECKING:
    from service.runtimes.base import Runtime

logger = logging.getLogger(__name__)

NUM_PROBES = 8  # probe samples each candidate must agree with Keras on
INSTALL_HINT = "pip install 'kerve[engines]'"


@dataclasses.dataclass
class Trial:
    engine: str
    precision: str
    outcome: str  # serving, faster, slower, disagrees, failed
    detail: str = ""
    batch_seconds: dict[int, float] = dataclasses.field(default_factory=dict)
    prepare_s: float | None = None  # export (unless cached) and compile
    cached: bool | None = None  # whether the ONNX export came from the cache
    engines: dict[str, Engine] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def total_seconds(self) -> float:
        return sum(self.batch_seconds.values())

    def as_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        del fields["engines"]
        times = fields.pop("batch_seconds")
        fields["batch_ms"] = {str(size): round(1000 * s, 2) for size, s in times.items()}
        return {k: v for k, v in fields.items() if v not in (None, "")}


@dataclasses.dataclass
class EngineReport:
    """What serves a version, why, and what else was tried."""

    engine: str
    precision: str
    backend: str
    reason: str
    trials: list[Trial]

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "precision": self.precision,
            "backend": self.backend,
            "reason": self.reason,
            "trials": [trial.as_dict() for trial in self.trials],
        }


def choose(runtime: Runtime, config: EngineConfig, model_path: Path | None) -> EngineReport:
    """Try the compiled engines ``config`` allows and leave the chosen one in ``runtime``
    (on the runtime's inference thread, after Keras has been warmed up and timed)."""
    keras_engines = runtime.engines
    keras_trial = Trial(
        "keras",
        next(iter(keras_engines.values())).precision,
        "serving",
        batch_seconds=runtime.batch_seconds,
    )
    backend = keras.backend.backend()
    if config.engine == "keras" or model_path is None:
        return EngineReport(
            "keras", keras_trial.precision, backend, "SERVE_ENGINE=keras", [keras_trial]
        )
    probes = runtime.probe_samples(min(NUM_PROBES, runtime.batching.max_batch_size))
    reference = runtime.predict_batch(probes)
    trials = [
        _try(runtime, engine, precision, config, model_path, probes, reference)
        for engine, precision in _candidates(config)
    ]
    agreeing = [t for t in trials if t.outcome == "agrees"]
    best = min(agreeing, key=lambda t: t.total_seconds, default=None)
    if config.engine != "auto" and best is None:
        detail = "; ".join(f"{t.engine} {t.precision}: {t.detail}" for t in trials)
        raise ValueError(f"SERVE_ENGINE={config.engine} cannot serve this model: {detail}")
    for trial in agreeing:
        trial.outcome = "faster" if trial.total_seconds < keras_trial.total_seconds else "slower"
    chosen = keras_trial
    if best is not None and (config.engine != "auto" or best.outcome == "faster"):
        keras_trial.outcome = "slower" if best.outcome == "faster" else "faster"
        chosen, best.outcome = best, "serving"
        runtime.engines, runtime.batch_seconds = best.engines, best.batch_seconds
        speed = keras_trial.total_seconds / best.total_seconds
        reason = f"{best.engine} {best.precision}: {speed:.2f}x Keras's speed; {best.detail}"
    else:
        reason = _why_keras(trials)
    for trial in trials:
        trial.engines = {}  # only the serving engines stay alive, in the runtime
    return EngineReport(chosen.engine, chosen.precision, backend, reason, [keras_trial, *trials])


def _candidates(config: EngineConfig) -> list[tuple[type[CompiledEngine], str]]:
    """(engine, precision) pairs to try, in the order they are tried."""
    names = list(COMPILED) if config.engine == "auto" else [config.engine]
    precisions = {
        "auto": ["fp32", "bf16"] if hardware.has_bf16() else ["fp32"],
        "fp32": ["fp32"],
        "bf16": ["bf16"],
    }[config.precision]
    return [
        (COMPILED[name], precision)
        for name in names
        for precision in precisions
        # A precision the engine lacks is tried (and fails with its reason) only when both
        # were named; auto precision means the ones each engine has.
        if precision in COMPILED[name].precisions
        or (config.engine != "auto" and config.precision != "auto")
    ]


def _try(
    runtime: Runtime,
    engine: type[CompiledEngine],
    precision: str,
    config: EngineConfig,
    model_path: Path,
    probes,
    reference,
) -> Trial:
    """Prepare one candidate, compare it with Keras on the probes, then time it."""
    trial = Trial(engine.name, precision, "failed")
    keras_engines = runtime.engines
    try:
        if not engine.installed():
            raise RuntimeError(f"{engine.module} is not installed ({INSTALL_HINT})")
        if precision == "bf16" and not hardware.has_bf16():
            raise RuntimeError(f"the CPU has no bf16 units ({' or '.join(hardware.BF16_FLAGS)})")
        started, cached = time.perf_counter(), True
        for part, model in runtime.compiled_parts().items():
            onnx_path, from_cache = exported_onnx(model_path, part, config.cache_dir)
            cached &= from_cache
            trial.engines[part] = engine(onnx_path, model.output, precision, config.cache_dir)
        trial.prepare_s = round(time.perf_counter() - started, 2)
        trial.cached = cached
        trial.precision = next(iter(trial.engines.values())).precision
        runtime.engines = trial.engines
        agreement = runtime.agreement(reference, runtime.predict_batch(probes), config.tolerance)
        trial.detail = f"{agreement.detail} on {len(probes)} probe samples"
        if not agreement.agrees:
            trial.outcome = "disagrees"
            trial.engines = {}
            return trial
        trial.batch_seconds = runtime.time_batches()
        trial.outcome = "agrees"
    except Exception as error:  # noqa: BLE001 - a candidate's failure only rules it out
        trial.detail = f"{type(error).__name__}: {error}"[:300]
        trial.engines = {}
    finally:
        runtime.engines = keras_engines
    return trial


def _why_keras(trials: list[Trial]) -> str:
    if not trials:
        return "no compiled engine to try"
    why = [
        f"{t.engine} {t.precision} {t.outcome}"
        + (f" ({t.total_seconds:.3f} s over the batch sizes)" if t.outcome == "slower" else "")
        + f": {t.detail}"
        for t in trials
    ]
    return "Keras; " + "; ".join(why)
