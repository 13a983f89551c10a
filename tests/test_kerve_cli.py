"""The `kerve` command: publish into the repository of a running server, list, serve."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import keras
import numpy as np
import pytest
from PIL import Image

import kerve_manifest
from bench.server import free_port
from tests.helpers import build_nearest_upscaler, encode, solid, wait_until

ROOT = Path(__file__).resolve().parents[1]
# Fewer of TensorFlow's C++ lines in the server log (`kerve publish` holds them back itself).
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
LABELS = [f"class_{i}" for i in range(10)]


def kerve(*arguments: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kerve_cli", *map(str, arguments)]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def snapshot(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `kerve serve` of an empty repository that it scans every 0.2 s: (url, folder).

    Not waited for: it starts while the tests build and publish their models."""
    models_dir = tmp_path_factory.mktemp("served")
    port = free_port()
    command = [sys.executable, "-m", "kerve_cli", "serve", "--models-dir", str(models_dir),
               "--port", str(port), "--poll-interval", "0.2", "--log-level", "warning"]  # fmt: skip
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}", models_dir
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log_path.read_text()


def get(url: str) -> httpx.Response | None:
    """``GET url``, or None while the server is still starting."""
    try:
        return httpx.get(url)
    except httpx.TransportError:
        return None


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory) -> Path:
    """An untrained 10-class MobileNetV3Small on 32x32 images, as a .keras file."""
    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), classes=10, weights=None, include_preprocessing=True
    )
    path = tmp_path_factory.mktemp("files") / "mobilenet.keras"
    model.save(path)
    return path


def labels_file(folder: Path, labels: list[str]) -> Path:
    path = folder / "labels.txt"
    path.write_text("\n".join(labels[:3]) + "\n\n" + "\n".join(labels[3:]) + "\n")  # a blank
    return path


def test_a_published_classifier_is_served_without_a_restart(server, mobilenet, tmp_path):
    url, models_dir = server
    done = kerve("publish", mobilenet, "--name", "mobilenet", "--task", "classification",
                 "--labels", labels_file(tmp_path, LABELS), "--scaling", "raw",
                 "--batching", '{"max_batch_size": 4}', "--models-dir", models_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"published mobilenet version 1: {models_dir / 'mobilenet' / '1'}"
    manifest = kerve_manifest.read_manifest(models_dir / "mobilenet" / "1")
    assert (manifest.input.height, manifest.input.width, manifest.input.channels) == (32, 32, 3)
    assert (manifest.labels, manifest.input.std, manifest.batching.max_batch_size) == (
        LABELS,
        [1.0],
        4,
    )

    def available() -> bool:
        response = get(f"{url}/v1/models/mobilenet")
        ok = response is not None and response.status_code == 200
        return ok and [v["state"] for v in response.json()["versions"]] == ["AVAILABLE"]

    wait_until(available, timeout_s=60, interval_s=0.2)
    response = httpx.post(
        f"{url}/v1/models/mobilenet/classify",
        content=encode(solid((200, 30, 30)), "PNG"),
        headers={"Content-Type": "image/png"},
    )
    assert response.status_code == 200, response.text
    (predictions,) = response.json()["predictions"]
    assert len(predictions) == 5 and {p["label"] for p in predictions} <= set(LABELS)


@pytest.mark.parametrize("case", ["corrupt", "class count", "bad batching", "missing file"])
def test_a_refused_model_exits_2_with_one_line_and_writes_nothing(
    case, repository, mobilenet, tmp_path
):
    corrupt = tmp_path / "x.keras"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    labels = ["--labels", labels_file(tmp_path, LABELS[:7])]
    arguments, reason = {
        "corrupt": ([corrupt, "--name", "new", *labels], "not a .keras file"),
        "class count": ([mobilenet, "--name", "colours", *labels], "7 labels need (None, 7)"),
        "bad batching": (
            [mobilenet, "--name", "colours", *labels, "--batching", '{"max_batch_size": 0}'],
            "max_batch_size",
        ),
        "missing file": ([tmp_path / "absent.keras", "--name", "new", *labels], "no such file"),
    }[case]
    before = snapshot(repository)
    done = kerve("publish", *arguments, "--task", "classification", "--models-dir", repository)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("kerve publish: error: ") and reason in done.stderr
    assert done.stdout == ""
    assert snapshot(repository) == before  # no new folder, no .staging-* left behind


def test_tasks_the_options_cannot_describe_are_refused_in_one_line(mobilenet, tmp_path):
    for task, needs in [("captioning", "vocabulary"), ("segmentation", "--labels")]:
        done = kerve("publish", mobilenet, "--name", "m", "--task", task, "--models-dir", tmp_path)
        assert done.returncode == 2 and needs in done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_tensor_model_publishes_with_no_options_and_is_listed(server, tmp_path):
    url, models_dir = server
    first, second = keras.Input((4,), name="first"), keras.Input((3,), name="second")
    joined = keras.layers.Concatenate()([first, second])
    path = tmp_path / "pair.keras"
    keras.Model([first, second], keras.layers.Dense(2)(joined)).save(path)
    done = kerve("publish", path, "--name", "pair", "--task", "tensor", "--models-dir", models_dir)
    assert done.returncode == 0, done.stderr

    listed = kerve("models", "--models-dir", models_dir)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["NAME", "VERSION", "STATE", "TASK"]
    assert re.search(r"^pair +1 +PUBLISHED +tensor$", listed.stdout, re.MULTILINE)

    wait_until(lambda: get(f"{url}/readyz"), timeout_s=60, interval_s=0.2)

    def served() -> re.Match | None:
        listed = kerve("models", "--url", url)
        assert listed.returncode == 0, listed.stderr
        return re.search(r"^pair +1 +AVAILABLE +tensor$", listed.stdout, re.MULTILINE)

    wait_until(served, timeout_s=60, interval_s=0.2)
    response = httpx.post(f"{url}/v2/models/pair/infer", json={"inputs": [
        {"name": "first", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "second", "shape": [1, 3], "datatype": "FP32", "data": [5, 6, 7]},
    ]})  # fmt: skip
    assert response.status_code == 200, response.text


def test_an_upscaler_publishes_with_its_measured_scale_and_is_served(server, tmp_path):
    url, models_dir = server
    path = tmp_path / "sr.keras"
    build_nearest_upscaler(3).save(path)  # any input size: tiled at 128 pixels
    done = kerve("publish", path, "--name", "sr", "--task", "upscaling", "--margin", "4",
                 "--models-dir", models_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = kerve_manifest.read_manifest(models_dir / "sr" / "1")
    assert (manifest.upscaling.scale, manifest.upscaling.margin) == (3, 4)
    assert (manifest.input.height, manifest.input.width, manifest.input.std) == (128, 128, [255.0])

    def available() -> bool:
        response = get(f"{url}/v1/models/sr")
        ok = response is not None and response.status_code == 200
        return ok and [v["state"] for v in response.json()["versions"]] == ["AVAILABLE"]

    wait_until(available, timeout_s=60, interval_s=0.2)
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    response = httpx.post(
        f"{url}/v1/models/sr/upscale",
        content=encode(image, "PNG"),
        headers={"Content-Type": "image/png", "Accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    upscaled = np.asarray(Image.open(io.BytesIO(response.content)))
    assert np.array_equal(upscaled, np.repeat(np.repeat(image, 3, axis=0), 3, axis=1))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (["--task", "upscaling", "--scale", "2"], "with scale 2 they must come out (256, 256, 3)"),
        (["--task", "upscaling", "--margin", "64"], "no centre left inside margins of 64 px"),
        (["--task", "tensor", "--scale", "2"], "--scale is for an upscaling model"),
        (["--task", "tensor", "--margin", "4"], "--margin is for a tiled task"),
    ],
)
def test_upscaling_options_are_checked_in_one_line(options, reason, tmp_path):
    path = tmp_path / "sr.keras"
    build_nearest_upscaler(3).save(path)
    models_dir = tmp_path / "models"
    done = kerve("publish", path, "--name", "sr", *options, "--models-dir", models_dir)
    assert done.returncode == 2 and reason in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert not models_dir.exists()


def test_models_lists_a_broken_version_as_invalid_with_its_reason(tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "manifest.json").write_text(json.dumps({"task": "nope"}))
    (tmp_path / "broken" / ".staging-2-x").mkdir()
    listed = kerve("models", "--models-dir", tmp_path)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "VERSION", "STATE", "TASK", "ERROR"]
    assert row.split()[:4] == ["broken", "1", "INVALID", "-"] and "invalid manifest.json" in row

    unreachable = kerve("models", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith("kerve models: error: cannot list the models")


def test_serve_help_is_the_services_and_python_m_service_still_works():
    script = Path(sys.executable).with_name("kerve")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "kerve_cli"]
    done = subprocess.run([*command, "serve", "--help"], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kerve serve") and "--poll-interval" in done.stdout
    service = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=ROOT, env=ENV,
                             capture_output=True, text=True)  # fmt: skip
    assert service.returncode == 0, service.stderr
    assert service.stdout.startswith("usage: python -m service")
    assert "--models-dir" in service.stdout
