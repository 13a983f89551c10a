"""Export a model (or one named sub-model) of a ``.keras`` file to ONNX, cached by the file's hash.

    python -m service.engines.onnx_export MODEL.keras PART OUT.onnx

The export runs in a child process, with the TensorFlow backend where TensorFlow is
installed (``tf2onnx`` gives a graph with a dynamic batch axis; a ``.keras`` file is
the same model on every backend), so a service on JAX or PyTorch gets compiled
engines too, and the exporter's memory and threads leave with the child.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

EXPORT_TIMEOUT_S = 900
EXPORTER_VERSION = "1"  # bump when the export changes, so cached files are made again


def exported_onnx(model_path: Path, part: str, cache_dir: Path | None) -> tuple[Path, bool]:
    """The ONNX file of ``part`` ("model" for the whole model) and whether it was cached."""
    root = cache_dir if cache_dir is not None else _scratch()
    folder = root / "onnx" / f"{file_hash(model_path)}-{EXPORTER_VERSION}"
    target = folder / f"{part}.onnx"
    if target.exists():
        return target, True
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{part}.{os.getpid()}.onnx"  # workers sharing a cache never see half
    environment = {**os.environ, "KERAS_BACKEND": export_backend(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", __name__, str(model_path), part, str(partial)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=EXPORT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"the exporter exited with {done.returncode}")
    partial.replace(target)
    return target, False


@functools.cache
def _scratch() -> Path:
    """Without a cache folder, exports live in one folder of this process, removed at exit."""
    folder = tempfile.TemporaryDirectory(prefix="kerve-onnx-")
    atexit.register(folder.cleanup)
    return Path(folder.name)


def export_backend() -> str:
    if importlib.util.find_spec("tensorflow") is not None:
        return "tensorflow"
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:24]


def export(model_path: Path, part: str, out: Path) -> None:
    import keras
    from keras.src.export.export_utils import get_input_signature

    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    if part != "model":
        model = model.get_layer(part)
    # A loaded model was never called, which export() refuses without a signature.
    model.export(out, format="onnx", input_signature=get_input_signature(model), verbose=False)


if __name__ == "__main__":
    export(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
