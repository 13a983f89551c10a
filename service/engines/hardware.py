"""What the CPU offers that the choice of engine and precision depends on."""

from __future__ import annotations

import functools
import re
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # units that compute in bf16 at full speed


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    found = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    return frozenset(found.group(1).split()) if found else frozenset()


def has_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_FLAGS)
