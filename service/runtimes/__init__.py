"""One Runtime subclass per task, found by the manifest's ``task``."""

from __future__ import annotations

from service.runtimes.base import Runtime
from service.runtimes.captioning import CaptioningRuntime
from service.runtimes.classification import ClassificationRuntime
from service.runtimes.denoising import DenoisingRuntime
from service.runtimes.generation import GenerationRuntime
from service.runtimes.segmentation import SegmentationRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    runtime.task: runtime
    for runtime in (
        ClassificationRuntime,
        SegmentationRuntime,
        CaptioningRuntime,
        DenoisingRuntime,
        GenerationRuntime,
    )
}
