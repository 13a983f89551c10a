"""Engines a loaded model can run on, by name: Keras itself, and compiled ONNX engines.

Which serves a version is chosen at load (``service.runtimes.engine_choice``).
"""

from __future__ import annotations

from service.engines.base import CompiledEngine, Engine, EngineConfig
from service.engines.keras import KerasEngine
from service.engines.onnxruntime import OnnxRuntimeEngine
from service.engines.openvino import OpenVinoEngine

ENGINES: dict[str, type[Engine]] = {
    engine.name: engine for engine in (KerasEngine, OpenVinoEngine, OnnxRuntimeEngine)
}
COMPILED: dict[str, type[CompiledEngine]] = {
    name: engine for name, engine in ENGINES.items() if issubclass(engine, CompiledEngine)
}

__all__ = ["COMPILED", "ENGINES", "CompiledEngine", "Engine", "EngineConfig", "KerasEngine"]
