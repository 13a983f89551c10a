"""Models saved under TensorFlow serve on every Keras backend (a .keras file is backend-free).

The models are published by a TensorFlow process, as the training scripts do, and served
by `python -m service` processes on JAX and PyTorch; every task answers, and the tensor
model's outputs match TensorFlow's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.server import free_port
from tests.helpers import encode, solid, wait_until

ROOT = Path(__file__).resolve().parent.parent
PUBLISH = """
import json, sys
from pathlib import Path
import numpy as np
from tests import helpers
root = Path(sys.argv[1])
helpers.publish_colour_classifier(root)
helpers.publish_colour_segmenter(root)
helpers.publish_captioner(root)
helpers.publish_denoiser(root)
helpers.publish_generator(root)
helpers.publish_tensor_model(root)
from kerve_backend import keras
model = keras.saving.load_model(root / "pair" / "1" / "model.keras")
x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
k = np.array([[1, 2], [3, 4]], np.int32)
out = model.predict_on_batch({"x": x, "k": k})
print(json.dumps({k: np.asarray(v).tolist() for k, v in out.items()}))
"""


def environment(backend: str) -> dict[str, str]:
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def saved_by_tensorflow(tmp_path_factory) -> tuple[Path, dict]:
    """Every task's tiny model, published by a TensorFlow process, and the tensor model's
    outputs for fixed inputs there."""
    root = tmp_path_factory.mktemp("models")
    done = subprocess.run(
        [sys.executable, "-c", PUBLISH, str(root)],
        cwd=ROOT, env=environment("tensorflow"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return root, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_models_saved_under_tensorflow_serve_on(backend, saved_by_tensorflow, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[{backend}]')")
    root, expected = saved_by_tensorflow
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"]
    settings = {"SERVE_MODELS_DIR": str(root), "SERVE_ENGINE": "keras"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**environment(backend), **settings}, stdout=log, stderr=log
        )
    try:
        wait_until(lambda: _ready(url), timeout_s=240)
        models = httpx.get(f"{url}/v1/models").json()["models"]
        engines = {m["name"]: m["versions"][0]["engine"] for m in models}
        assert len(engines) == 6, log_path.read_text()[-3000:]
        assert {e["backend"] for e in engines.values()} == {backend}

        red = encode(solid((250, 10, 10)), "PNG")
        png = {"Content-Type": "image/png"}
        classified = httpx.post(f"{url}/v1/classify", content=red, headers=png).json()
        assert classified["predictions"][0][0]["label"] == "red"
        for verb in ("segment", "caption", "denoise"):
            answer = httpx.post(f"{url}/v1/{verb}", content=red, headers=png, timeout=60)
            assert answer.status_code == 200, (verb, answer.text)
        generated = httpx.post(f"{url}/v1/generate", json={"label": 0, "count": 2, "seed": 1})
        assert len(generated.json()["images"]) == 2

        inputs = {"inputs": {"x": [[i / 8 for i in range(r, r + 4)] for r in (0, 4)],
                             "k": [[1, 2], [3, 4]]}}  # fmt: skip
        outputs = httpx.post(f"{url}/v1/models/pair:predict", json=inputs).json()["outputs"]
        for name, values in expected.items():
            np.testing.assert_allclose(outputs[name], values, rtol=1e-5, atol=1e-6)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.TransportError:
        return False
