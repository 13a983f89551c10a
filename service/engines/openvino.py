"""OpenVINO on the CPU: fp32, or bf16 where the CPU has the units for it (AMX, AVX512-BF16).

OpenVINO's CPU plugin picks bf16 by itself on such CPUs, so fp32 is asked for
explicitly; compiled blobs are cached in ``cache_dir`` (its ``CACHE_DIR``), so a
restart compiles nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.engines.base import CompiledEngine, Precision

HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoEngine(CompiledEngine):
    name = "openvino"
    module = "openvino"
    precisions = ("fp32", "bf16")

    def compile(self, onnx_path: Path, precision: Precision, cache_dir: Path | None) -> None:
        import openvino

        core = openvino.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": HINTS[precision]}
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir / "openvino")
        self.compiled = core.compile_model(core.read_model(onnx_path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        inputs = self.compiled.inputs
        self.input_names = [port.get_any_name() for port in inputs]
        self.input_dtypes = [np.dtype(port.get_element_type().to_dtype()) for port in inputs]
        # The precision OpenVINO settled on, by its short name (str() of a Type is a repr,
        # "<Type: 'bfloat16'>", and varies between releases).
        real = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        real = real.get_type_name() if hasattr(real, "get_type_name") else str(real)
        self.precision = {"bf16": "bf16", "f32": "fp32"}.get(real, real)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(inputs)  # copies the outputs out of the request
        return [np.asarray(results[port]) for port in self.compiled.outputs]
