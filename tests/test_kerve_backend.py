"""Keras imported through kerve_backend: TensorFlow's start-up lines held back unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

NOISE = ("absl::InitializeLog", "oneDNN custom operations")


def import_stderr(**env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in ("KERVE_BACKEND_LOGS",)}
    done = subprocess.run(
        [sys.executable, "-c", "from kerve_backend import keras; print(keras.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_the_backend_imports_without_its_start_up_lines():
    assert not any(line in import_stderr() for line in NOISE)


def test_the_lines_come_back_when_asked_for():
    shown = import_stderr(KERVE_BACKEND_LOGS="1")
    if not any(line in shown for line in NOISE):
        pytest.skip("this TensorFlow build prints no start-up lines to hold back")
