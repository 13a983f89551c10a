"""Keras imported through kerve_backend: TensorFlow's start-up lines held back unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

NOISE = ("absl::InitializeLog", "oneDNN custom operations")


def import_stderr(statement: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "KERVE_BACKEND_LOGS"}
    done = subprocess.run(
        [sys.executable, "-c", statement],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.fixture(scope="module")
def noisy() -> bool:
    """Whether this TensorFlow build writes start-up lines at all, imported bare."""
    return any(line in import_stderr("import keras") for line in NOISE)


def test_the_backend_imports_without_its_start_up_lines(noisy):
    quiet = import_stderr("from kerve_backend import keras")
    assert not any(line in quiet for line in NOISE)
    if not noisy:
        pytest.skip("this TensorFlow build prints no start-up lines to hold back")


def test_the_lines_come_back_when_asked_for(noisy):
    if not noisy:
        pytest.skip("this TensorFlow build prints no start-up lines to hold back")
    shown = import_stderr("from kerve_backend import keras", KERVE_BACKEND_LOGS="1")
    assert any(line in shown for line in NOISE)
