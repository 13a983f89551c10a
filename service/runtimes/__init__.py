"""The task registry: one Runtime subclass per task, found by the manifest's ``task``.

Routes, metrics labels, the endpoint lists of /v1/models and through them the load
tests, benchmarks and smoke check are all derived from this table.
"""

from __future__ import annotations

from service.runtimes.base import Runtime
from service.runtimes.captioning import CaptioningRuntime
from service.runtimes.classification import ClassificationRuntime
from service.runtimes.denoising import DenoisingRuntime
from service.runtimes.generation import GenerationRuntime
from service.runtimes.segmentation import SegmentationRuntime
from service.runtimes.tensor import TensorRuntime
from service.runtimes.upscaling import UpscalingRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    runtime.task: runtime
    for runtime in (
        ClassificationRuntime,
        SegmentationRuntime,
        CaptioningRuntime,
        DenoisingRuntime,
        UpscalingRuntime,
        GenerationRuntime,
        TensorRuntime,
    )
}
