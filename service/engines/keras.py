"""The Keras engine: the model itself, on whichever backend Keras runs (always available)."""

from __future__ import annotations

from typing import Any

from service.engines.base import Engine


class KerasEngine(Engine):
    name = "keras"
    module = "keras"

    def __init__(self, model) -> None:
        self.model = model
        self.precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
            model.dtype_policy.compute_dtype, model.dtype_policy.compute_dtype
        )

    def predict(self, inputs: Any) -> Any:
        return self.model.predict_on_batch(inputs)
