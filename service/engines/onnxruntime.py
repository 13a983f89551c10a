"""ONNX Runtime's CPU (or CUDA, where installed and a GPU is visible) execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.engines.base import CompiledEngine, Precision

ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OnnxRuntimeEngine(CompiledEngine):
    name = "onnxruntime"
    module = "onnxruntime"

    def compile(self, onnx_path: Path, precision: Precision, cache_dir: Path | None) -> None:
        import onnxruntime

        if precision != "fp32":
            raise ValueError(f"onnxruntime runs fp32 models here, not {precision}")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # its warnings about unused initializers are noise
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in onnxruntime.get_available_providers()]
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=providers)
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.input_dtypes = [np.dtype(ONNX_DTYPES.get(i.type, np.float32)) for i in inputs]
        self.precision = "fp32"

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, inputs, strict=True)))
