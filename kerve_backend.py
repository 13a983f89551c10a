"""Keras, imported without TensorFlow's start-up lines: ``from kerve_backend import keras``.

Importing TensorFlow writes absl's "All log messages before absl::InitializeLog()" and
oneDNN notices straight to file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says. The
server, the zoo and the CLI import Keras through here, with those bytes held back: they
are shown if the import fails, or always with ``KERVE_BACKEND_LOGS=1`` (or
``SERVE_LOG_LEVEL=debug``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines: noise


def wanted() -> bool:
    """Whether the backend's own log lines were asked for."""
    return os.environ.get("KERVE_BACKEND_LOGS") == "1" or (
        os.environ.get("SERVE_LOG_LEVEL", "").lower() == "debug"
    )


@contextlib.contextmanager
def stderr_held(expected: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Hold what is written to file descriptor 2 meanwhile; write it out after all if an
    exception not in ``expected`` escapes (an error the caller reports itself is enough)."""
    if wanted():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        shown = True
        try:
            yield
            shown = False
        except expected:
            shown = False
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if shown:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


__all__ = ["devices", "keras", "stderr_held", "wanted"]

with stderr_held():
    import keras


def devices() -> list[str]:
    """The devices Keras can place work on, for the log. Keras lists them for TensorFlow
    and JAX; the PyTorch backend has no such list, so ask torch."""
    try:
        return keras.distribution.list_devices()
    except AttributeError:
        import torch

        gpus = [f"cuda:{index}" for index in range(torch.cuda.device_count())]
        return [*gpus, "cpu"]
