"""Engine: how a loaded Keras model runs, called like ``keras.Model.predict_on_batch``.

A runtime calls its engines with what it would hand Keras (one array, a list in the
order of the model's inputs, or a dict by input name) and gets back what Keras would
give (one array, or the model's output structure), so that a compiled engine can
replace Keras without the runtime knowing.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.util
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

Precision = Literal["fp32", "bf16"]


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How a version chooses its engine (``SERVE_ENGINE``, ``SERVE_PRECISION``, ...)."""

    engine: Literal["auto", "keras", "openvino", "onnxruntime"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    tolerance: float = 1.0  # scales every task's agreement tolerance; 0: identical outputs
    cache_dir: Path | None = None  # exported and compiled artifacts; None: export every load


class Engine(abc.ABC):
    name: ClassVar[str]
    module: ClassVar[str]  # the package that must be installed for this engine
    precisions: ClassVar[tuple[Precision, ...]] = ("fp32",)
    precision: str = "fp32"  # what it really computes in, as the engine reports it

    @classmethod
    def installed(cls) -> bool:
        return importlib.util.find_spec(cls.module) is not None

    @abc.abstractmethod
    def predict(self, inputs: Any) -> Any:
        """Outputs for one batch, as ``predict_on_batch`` would return them."""


class CompiledEngine(Engine):
    """An engine that runs an ONNX export of the model, with flat lists of tensors."""

    def __init__(
        self, onnx_path: Path, structure: Any, precision: Precision, cache_dir: Path | None
    ):
        self.structure = structure  # the Keras model's output structure, to pack results into
        self.input_names: list[str] = []
        self.input_dtypes: list[np.dtype] = []
        self.compile(onnx_path, precision, cache_dir)

    @abc.abstractmethod
    def compile(self, onnx_path: Path, precision: Precision, cache_dir: Path | None) -> None:
        """Read the ONNX file and make it ready to run (sets input names and dtypes)."""

    @abc.abstractmethod
    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs for a flat list of inputs in the ONNX graph's order."""

    def predict(self, inputs: Any) -> Any:
        import keras  # the tree helpers only: the engine itself needs no backend

        if isinstance(inputs, dict):
            # Export names each graph input after its Keras input; fall back to order.
            if set(inputs) == set(self.input_names):
                flat = [inputs[name] for name in self.input_names]
            else:
                flat = keras.tree.flatten(inputs)
        elif isinstance(inputs, list | tuple):
            flat = list(inputs)
        else:
            flat = [inputs]
        if len(flat) != len(self.input_names):
            raise ValueError(f"the engine takes {len(self.input_names)} inputs, got {len(flat)}")
        feed = [
            np.ascontiguousarray(x, dtype=dtype)
            for x, dtype in zip(flat, self.input_dtypes, strict=True)
        ]
        outputs = self.run(feed)
        return keras.tree.pack_sequence_as(self.structure, outputs)
