"""The locust load tests against a real server, their checks, payloads and ramp.

locust patches the standard library with gevent when imported, so it only ever
runs in subprocesses here; ``loadtest.checks`` and ``loadtest.payloads`` do not
import it.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.server import running_service
from loadtest import checks, payloads, plot
from tests.helpers import (
    CAPTION_VOCABULARY,
    build_captioner,
    publish_captioner,
    publish_colour_classifier,
    publish_colour_segmenter,
    publish_denoiser,
    publish_generator,
    publish_upscaler,
)

ROOT = Path(__file__).resolve().parents[2]
ENDPOINTS = ["/v1/classify", "/v1/segment", "/v1/caption", "/v1/denoise", "/v1/upscale",
             "/v1/generate"]  # fmt: skip
SMALL_SIZES = {"KERVE_LOADTEST_SIZES": "40,96", "KERVE_LOADTEST_DENOISE_SIZES": "48",
               "KERVE_LOADTEST_UPSCALE_SIZES": "24,40"}  # fmt: skip


def wordy_captioner():
    """The tiny random captioner, made never to end at once: an empty caption is a
    failure to the load test, and a random model may well say nothing."""
    model = build_captioner()
    head = model.get_layer("decoder").get_layer("next_token")
    kernel, bias = head.get_weights()
    bias[CAPTION_VOCABULARY.index("<end>")] -= 20.0
    head.set_weights([kernel, bias])
    return model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``python -m service`` serving a tiny model for each of the six tasks."""
    root = tmp_path_factory.mktemp("loadtest")
    models = root / "models"
    publish_colour_classifier(models)
    publish_colour_segmenter(models)
    publish_captioner(models, model=wordy_captioner())
    publish_denoiser(models)
    publish_generator(models)
    publish_upscaler(models, scale=3)
    with running_service(models, root / "server.log") as (base_url, _process):
        yield base_url


def run_locust(base_url: str, out: Path, *arguments: str, env: dict | None = None):
    """Run locust headless; (its process, {request name: stats row}, failures rows)."""
    command = [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
               "--host", base_url, "--csv", str(out / "run"), "--only-summary",
               *arguments]  # fmt: skip
    environment = {**os.environ, **SMALL_SIZES, **(env or {})}
    process = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )
    with open(out / "run_stats.csv") as stats_file:
        stats = {row["Name"]: row for row in csv.DictReader(stats_file)}
    with open(out / "run_failures.csv") as failures_file:
        failures = list(csv.DictReader(failures_file))
    return process, stats, failures


def test_every_user_gets_right_answers_from_a_real_server(server, tmp_path):
    # One user per user class, Mixed included.
    process, stats, failures = run_locust(server, tmp_path, "-u", "7", "-r", "7", "-t", "8s")
    assert process.returncode == 0, process.stderr[-3000:]
    assert failures == []
    for endpoint in ENDPOINTS:
        assert int(stats[endpoint]["Request Count"]) > 0, endpoint
        assert int(stats[endpoint]["Failure Count"]) == 0, endpoint
    assert int(stats["Aggregated"]["Request Count"]) >= 30

    history = plot.read_history(tmp_path / "run")  # what `make loadtest-ramp` plots
    assert len(history["t"]) >= 2 and max(history["rps"]) > 0
    assert all(len(values) == len(history["t"]) for values in history.values())
    image = plot.plot(history, tmp_path / "run.png", "test run")
    assert Image.open(image).format == "PNG"


def test_a_user_without_its_model_stops_while_the_others_go_on(server, tmp_path):
    process, stats, failures = run_locust(
        server, tmp_path, "-u", "2", "-r", "2", "-t", "6s", "ClassifyUser", "GenerateUser",
        env={"KERVE_GENERATE_MODEL": "no-such-generator"},
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    assert "GenerateUser stops: the server has no model for generation" in process.stderr
    assert failures == []
    assert int(stats["/v1/classify"]["Request Count"]) > 0
    assert not any("generate" in name for name in stats)


def test_tags_run_one_task_alone(server, tmp_path):
    process, stats, failures = run_locust(
        server, tmp_path, "-u", "3", "-r", "3", "-t", "6s", "--tags", "generate"
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert {name for name in stats} == {"/v1/models", "/v1/generate", "Aggregated"}
    assert failures == []


def png_b64(width: int, height: int) -> dict:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return {"b64": base64.b64encode(buffer.getvalue()).decode()}


def test_the_users_send_the_api_key_they_are_given():
    code = "from loadtest.locustfile import KerveUser; print(KerveUser.default_headers)"
    for key, expected in (("a-key", "{'X-API-Key': 'a-key'}"), ("", "None")):
        environment = {**os.environ, "KERVE_API_KEY": key}
        command = [sys.executable, "-c", code]
        shown = subprocess.run(
            command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
        )
        assert shown.stdout.strip() == expected, shown.stderr[-2000:]


def test_status_check_names_shedding_apart_from_errors():
    assert checks.check_status(200, {}, {}) is None
    assert checks.check_status(503, {"Retry-After": "1"}, {}) == "overloaded (503)"
    assert checks.check_status(503, {}, {}) == "503 without Retry-After"
    assert checks.check_status(504, {}, {}) == "deadline passed (504)"
    body = {"error": {"code": "bad_request", "message": "..."}}
    assert checks.check_status(400, {}, body) == "HTTP 400 (bad_request)"
    assert checks.check_status(500, {}, None) == "HTTP 500"


def test_classify_check_fails_wrong_answers():
    good = {"predictions": [[{"label": "red", "index": 0, "score": 0.9},
                             {"label": "blue", "index": 2, "score": 0.1}]]}  # fmt: skip
    assert checks.check_classify(good, 1) is None
    assert checks.check_classify(good, 2) == "1 prediction lists for 2 images"
    assert checks.check_classify({"predictions": [[]]}, 1) == "an empty prediction list"
    assert checks.check_classify({"model": "x"}, 1) == "no predictions"
    assert checks.check_classify([], 1) == "not a JSON object"
    worse_first = {"predictions": [list(reversed(good["predictions"][0]))]}
    assert checks.check_classify(worse_first, 1) == "predictions not best first"
    no_score = {"predictions": [[{"label": "red", "index": 0}]]}
    assert checks.check_classify(no_score, 1).startswith("a malformed prediction")


def test_segment_check_fails_wrong_answers():
    good = {"width": 30, "height": 20, "labels": ["background", "red"], "mask": png_b64(30, 20),
            "class_fractions": {"background": 0.75, "red": 0.25}}  # fmt: skip
    assert checks.check_segment(good, 30, 20) is None
    assert checks.check_segment(good, 40, 20) == "not a 40x20 segmentation"
    assert checks.check_segment({**good, "mask": png_b64(15, 10)}, 30, 20) == (
        "mask is 15x10, not 30x20"
    )
    assert checks.check_segment({**good, "mask": {"b64": "bm90IGEgcG5n"}}, 30, 20) == (
        "mask does not decode"
    )
    assert checks.check_segment({**good, "labels": []}, 30, 20) == "no labels"
    half = {**good, "class_fractions": {"background": 0.5}}
    assert checks.check_segment(half, 30, 20) == "class fractions do not sum to 1 over the labels"


def test_caption_check_fails_empty_captions():
    good = {"captions": [{"caption": "a red square", "log_prob": -1.2, "ended": True}]}
    assert checks.check_caption(good, 1) is None
    assert checks.check_caption({"captions": [{"caption": " ", "log_prob": -1.0}]}, 1) == (
        "an empty caption"
    )
    assert checks.check_caption({"captions": []}, 1) == "0 captions for 1 images"


def test_denoise_check_fails_an_image_of_another_size():
    good = {"width": 64, "height": 48, "tiles": 4, "image": png_b64(64, 48)}
    assert checks.check_denoise(good, 64, 48) is None
    assert checks.check_denoise({**good, "image": png_b64(62, 46)}, 64, 48) == (
        "image is 62x46, not 64x48"
    )
    assert checks.check_denoise({**good, "tiles": 0}, 64, 48) == "no tiles"
    assert checks.check_denoise({**good, "image": None}, 64, 48) == "no image"


def test_upscale_check_fails_an_image_not_scale_times_larger():
    good = {"width": 96, "height": 72, "scale": 3, "tiles": 4, "image": png_b64(96, 72)}
    assert checks.check_upscale(good, 32, 24) is None
    assert checks.check_upscale(good, 32, 25) == "not a 96x75 image (3x 32x25)"
    assert checks.check_upscale({**good, "image": png_b64(96, 70)}, 32, 24) == (
        "image is 96x70, not 96x72"
    )
    assert checks.check_upscale({**good, "scale": 1}, 32, 24) == "no scale"
    assert checks.check_upscale({**good, "tiles": 0}, 32, 24) == "no tiles"


def test_generate_check_fails_a_wrong_count_or_label():
    images = [png_b64(12, 12) for _ in range(3)]
    good = {"label": "ring", "width": 12, "height": 12, "images": images}
    assert checks.check_generate(good, "ring", 3) is None
    assert checks.check_generate(good, "ring", 4) == "3 images for a count of 4"
    assert checks.check_generate(good, "cross", 3) == "images of 'ring', not 'cross'"
    assert checks.check_generate({**good, "width": 28}, "ring", 3) == (
        "generated image is 12x12, not 28x12"
    )


def test_payloads_are_real_photos_as_jpeg_and_png_at_each_size():
    built = payloads.make_payloads(payloads.load_photos(), (32, 80))
    photos = len(payloads.SKIMAGE_PHOTOS) + len(payloads.SKLEARN_PHOTOS)
    assert len(built) == photos * 2 * 2
    for payload in built:
        with Image.open(io.BytesIO(payload.body)) as image:
            assert image.format == {"image/jpeg": "JPEG", "image/png": "PNG"}[payload.content_type]
            assert image.mode == "RGB"
            assert image.size == (payload.width, payload.height)
            assert max(image.size) in (32, 80)
            pixels = np.asarray(image, np.float32)
        assert pixels.std() > 10  # a photo, not a blank


def test_noisy_payloads_carry_sigma_25():
    photos = {"coffee": payloads.load_photos()["coffee"]}
    clean, noisy = (
        next(
            p
            for p in payloads.make_payloads(photos, (128,), sigma)
            if p.content_type == "image/png"
        )
        for sigma in (None, 25.0)
    )
    difference = np.asarray(Image.open(io.BytesIO(noisy.body)), np.float32) - np.asarray(
        Image.open(io.BytesIO(clean.body)), np.float32
    )
    assert (noisy.width, noisy.height) == (clean.width, clean.height) == (128, 85)
    assert 22 < difference.std() < 26  # clipping at 0 and 255 takes a little off


def test_sizes_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("KERVE_LOADTEST_SIZES", "64, 128")
    assert payloads.sizes_from_env("KERVE_LOADTEST_SIZES", (224,)) == (64, 128)
    monkeypatch.setenv("KERVE_LOADTEST_SIZES", "4")
    with pytest.raises(ValueError):
        payloads.sizes_from_env("KERVE_LOADTEST_SIZES", (224,))


RAMP_TICKS = textwrap.dedent("""
    import json, sys
    from loadtest.ramp import RampPastSaturation
    shape = RampPastSaturation()
    ticks = []
    for tenth in range(0, 400):
        shape.get_run_time = lambda: tenth / 10
        ticks.append(shape.tick())
    json.dump(ticks, sys.stdout)
""")


def test_ramp_goes_past_its_peak_holds_and_comes_back_down():
    env = {**os.environ, "KERVE_RAMP_PEAK_USERS": "40", "KERVE_RAMP_STEPS": "4",
           "KERVE_RAMP_STEP_S": "3", "KERVE_RAMP_HOLD_S": "6"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", RAMP_TICKS], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    ticks = json.loads(result.stdout)
    users = [tick[0] for tick in ticks if tick is not None]
    # 4 steps up of 3 s, 6 s held at 40, 4 steps down of 3 s: 30 s, then the end.
    assert ticks[300:] == [None] * 100 and None not in ticks[:300]
    peak_at = users.index(40)
    assert users[:peak_at] == sorted(users[:peak_at]) and users[0] == 10
    assert users[peak_at : peak_at + 90] == [40] * 90  # the fourth step and the hold
    assert users[peak_at + 90 :] == sorted(users[peak_at + 90 :], reverse=True)
    assert users[-1] == 1
    assert all(tick[1] > 0 for tick in ticks if tick is not None)
