"""The image's smoke test (deploy/smoke.py check) on tiny models: right answers pass,
a wrong answer or a model without a case fails, and it stops the server with SIGTERM.

The Dockerfile runs it on the demo zoo in its `smoke` target; `prepare`, which needs
that zoo, runs there (deploy/build-image.sh)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.server import free_port
from tests.helpers import (
    SEGMENT_LABELS,
    publish_colour_classifier,
    publish_colour_segmenter,
    solid,
)

ROOT = Path(__file__).resolve().parents[2]


def write_cases(files: Path, models: dict) -> None:
    files.mkdir(exist_ok=True)
    for colour, rgb in (("red", (220, 10, 10)), ("green", (10, 220, 10)), ("blue", (10, 10, 220))):
        Image.fromarray(solid(rgb, (24, 24))).save(files / f"{colour}.png")
    halves = np.zeros((32, 32, 3), np.uint8)  # red on the left, blue on the right
    halves[:, :16, 0] = halves[:, 16:, 2] = 230
    Image.fromarray(halves).save(files / "halves.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16], mask[:, 16:] = SEGMENT_LABELS.index("red"), SEGMENT_LABELS.index("blue")
    Image.fromarray(mask).save(files / "halves-mask.png")
    (files / "cases.json").write_text(json.dumps({"models": models}))


def colour_cases(right: bool) -> dict:
    indices = {"red": 0, "green": 1, "blue": 2} if right else {"red": 2, "green": 0, "blue": 1}
    return {
        "task": "classification",
        "minimum": 1.0,
        "cases": [{"file": f"{c}.png", "indices": [index]} for c, index in indices.items()],
    }


SEGMENTER_CASES = {
    "task": "segmentation",
    "minimum": 0.9,
    "labels": SEGMENT_LABELS,
    "cases": [{"file": "halves.png", "mask": "halves-mask.png"}],
}


def run_check(files: Path, repository: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "deploy/smoke.py", "check", str(files),
               "--models-dir", str(repository), "--port", str(free_port())]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def verdicts(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if line[:4] in ("ok  ", "FAIL")]


def test_right_answers_pass_and_the_server_stops_cleanly(tmp_path):
    repository = tmp_path / "models"
    publish_colour_classifier(repository)
    publish_colour_segmenter(repository)
    write_cases(tmp_path / "cases", {"colours": colour_cases(True), "regions": SEGMENTER_CASES})

    result = run_check(tmp_path / "cases", repository)

    lines = verdicts(result)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert all(line.startswith("ok") for line in lines)
    assert any(line.startswith("ok   /v1/models/colours/classify: 1 ") for line in lines)
    assert any(line.startswith("ok   /v1/models/regions/segment: 1 ") for line in lines)
    for route in ("/v1/classify", "/v1/segment", "GET /healthz", "GET /metrics", "a bad image"):
        assert any(route in line for line in lines), route
    assert any("SIGTERM" in line and "exit code 0" in line for line in lines)
    assert result.stdout.rstrip().endswith("smoke test passed")


def test_a_wrong_answer_or_a_model_without_a_case_fails(tmp_path):
    repository = tmp_path / "models"
    publish_colour_classifier(repository)
    publish_colour_segmenter(repository)
    write_cases(tmp_path / "cases", {"colours": colour_cases(False)})

    result = run_check(tmp_path / "cases", repository)

    failed = [line for line in verdicts(result) if line.startswith("FAIL")]
    assert result.returncode == 1
    assert len(failed) == 2, failed
    assert failed[0].startswith("FAIL /v1/models/colours/classify: 0 (at least 1.0)")
    assert failed[1].startswith("FAIL regions (segmentation): no smoke case")
    assert result.stdout.rstrip().endswith("2 failed")


def test_upscaling_is_scored_over_bicubic_and_a_wrong_size_fails(tmp_path):
    """check_upscaling on its own, with a stand-in server that answers a given image."""
    spec = importlib.util.spec_from_file_location("smoke", ROOT / "deploy" / "smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    yy, xx = np.mgrid[0:64, 0:48]
    original = np.stack([xx * 5, yy * 4, 128 + 100 * np.sin(xx / 5) * np.cos(yy / 4)], -1)
    original = Image.fromarray(original.astype(np.uint8))
    small = original.resize((24, 32), Image.Resampling.BICUBIC)
    original.save(tmp_path / "original.png")
    small.save(tmp_path / "small.png")
    model = {"cases": [{"file": "small.png", "original": "original.png"}]}

    class Answering:
        def __init__(self, image: Image.Image) -> None:
            self.image = image

        def post_image(self, route: str, body: bytes) -> dict:
            assert body == (tmp_path / "small.png").read_bytes()
            buffer = io.BytesIO()
            self.image.save(buffer, "PNG")
            return {"image": {"b64": base64.b64encode(buffer.getvalue()).decode()}}

    def score(answer: Image.Image) -> float:
        return smoke.check_upscaling(Answering(answer), "/v1/upscale", model, tmp_path)[0]

    assert score(small.resize((48, 64), Image.Resampling.BICUBIC)) == 0.0
    assert score(original) > 50  # exact: PSNR capped at 168 dB
    assert score(small.resize((48, 64), Image.Resampling.NEAREST)) < 0
    with pytest.raises(AssertionError, match="came back 46x64, not 48x64"):
        score(original.crop((0, 0, 46, 64)))
