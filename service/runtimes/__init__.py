"""One Runtime subclass per task, found by the manifest's ``task``."""

from __future__ import annotations

from service.runtimes.base import Runtime
from service.runtimes.classification import ClassificationRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    ClassificationRuntime.task: ClassificationRuntime,
}
