"""POST /v1/segment against a tiny real segmenter (red and blue regions)."""

from __future__ import annotations

import base64
import concurrent.futures
import io

import numpy as np
import pytest
from PIL import Image

from service.settings import BatchingOverride
from tests.helpers import (
    SEGMENT_LABELS,
    encode,
    histogram_sum_count,
    make_settings,
    start_client,
    wait_ready,
)

PNG = {"Content-Type": "image/png"}


@pytest.fixture
def segment_client(segment_repository):
    with start_client(make_settings(segment_repository)) as client:
        wait_ready(client)
        yield client


def stripes(width: int, height: int) -> np.ndarray:
    """Red on the left third, white in the middle, blue on the right third."""
    image = np.full((height, width, 3), 255, np.uint8)
    image[:, : width // 3] = (220, 20, 20)
    image[:, width - width // 3 :] = (20, 20, 220)
    return image


def decode_png(b64_or_bytes: str | bytes) -> Image.Image:
    data = base64.b64decode(b64_or_bytes) if isinstance(b64_or_bytes, str) else b64_or_bytes
    return Image.open(io.BytesIO(data))


def test_mask_has_the_input_size_and_the_right_classes(segment_client):
    response = segment_client.post(
        "/v1/segment", content=encode(stripes(91, 37), "PNG"), headers=PNG
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("regions", 1)
    assert (body["width"], body["height"], body["labels"]) == (91, 37, SEGMENT_LABELS)
    mask_image = decode_png(body["mask"]["b64"])
    assert mask_image.mode == "P" and mask_image.size == (91, 37)
    mask = np.asarray(mask_image)
    assert set(np.unique(mask)) <= {0, 1, 2}
    # Away from the stripes' edges (nearest-neighbour from 16 px wide) the classes are exact.
    assert (mask[:, :24] == 1).all() and (mask[:, 36:55] == 0).all() and (mask[:, 67:] == 2).all()
    fractions = body["class_fractions"]
    assert set(fractions) == {"background", "red", "blue"}
    assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-5)
    assert fractions["red"] == pytest.approx((mask == 1).mean(), abs=1e-5)
    assert body["overlay"] is None


def test_accept_png_returns_the_mask_alone(segment_client):
    image = stripes(40, 20)
    headers = {**PNG, "Accept": "image/png"}
    response = segment_client.post("/v1/models/regions/segment", content=encode(image, "PNG"),
                                   headers=headers)  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    mask = decode_png(response.content)
    assert mask.size == (40, 20) and mask.mode == "P"
    as_json = segment_client.post("/v1/segment", content=encode(image, "PNG"), headers=PNG).json()
    assert np.array_equal(np.asarray(mask), np.asarray(decode_png(as_json["mask"]["b64"])))


def test_overlay_blends_class_colours_over_the_image(segment_client, photo):
    response = segment_client.post(
        "/v1/models/regions/versions/1/segment?overlay=true",
        content=encode(photo, "JPEG"),
        headers={"Content-Type": "image/jpeg"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    overlay = decode_png(body["overlay"]["b64"])
    assert overlay.mode == "RGB" and overlay.size == (photo.shape[1], photo.shape[0])
    mask = np.asarray(decode_png(body["mask"]["b64"]))
    pixels = np.asarray(overlay).astype(int)
    background = mask == 0
    # Background pixels are the decoded image's own (JPEG round trip aside).
    assert np.abs(pixels[background] - photo[background].astype(int)).mean() < 4


def test_batched_requests_give_the_same_masks_as_one_by_one(segment_repository):
    sizes = [(31, 17), (64, 64), (17, 40), (100, 9), (48, 33), (20, 20), (75, 50), (9, 90)]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]
    bodies = [encode(image, "PNG") for image in images]

    def masks(settings, concurrency):
        with start_client(settings) as client:
            wait_ready(client)

            def segment(body):
                response = client.post("/v1/segment", content=body, headers=PNG)
                assert response.status_code == 200, response.text
                return np.asarray(decode_png(response.json()["mask"]["b64"]))

            with concurrent.futures.ThreadPoolExecutor(concurrency) as threads:
                found = list(threads.map(segment, bodies))
            return found, client.get("/metrics").text

    one_by_one, _ = masks(
        make_settings(segment_repository, batching=BatchingOverride(max_batch_size=1)), 1
    )
    batched, metrics = masks(
        make_settings(segment_repository, batching=BatchingOverride(max_delay_ms=200)), len(bodies)
    )
    total, calls = histogram_sum_count(metrics, "kerve_batch_size", "regions")
    assert total == len(bodies) and calls < len(bodies)  # requests shared model calls
    for (width, height), alone, together in zip(sizes, one_by_one, batched, strict=True):
        assert alone.shape == (height, width)
        assert np.array_equal(alone, together)
    assert any(len(np.unique(m)) == 3 for m in batched)  # the comparison is not trivial


@pytest.mark.parametrize(
    ("description", "kwargs", "status", "code"),
    [
        ("not an image", {"content": b"hello", "headers": PNG}, 400, "invalid_image"),
        ("empty body", {"content": b"", "headers": PNG}, 400, "bad_request"),
        (
            "two images",
            {
                "files": [
                    ("file", ("a.png", b"x", "image/png")),
                    ("file", ("b.png", b"y", "image/png")),
                ]
            },
            400,
            "bad_request",
        ),
        (
            "form encoded",
            {"content": b"a=b", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
    ],
)
def test_bad_input_gets_a_clear_4xx(segment_client, description, kwargs, status, code):
    response = segment_client.post("/v1/segment", **kwargs)
    assert response.status_code == status, (description, response.text)
    assert response.json()["error"]["code"] == code


def test_wrong_task_and_unknown_model(segment_client):
    body = encode(stripes(20, 20), "PNG")
    wrong = segment_client.post("/v1/models/colours/segment", content=body, headers=PNG)
    assert wrong.status_code == 400 and "classification" in wrong.json()["error"]["message"]
    missing = segment_client.post("/v1/segment?model=nope", content=body, headers=PNG)
    assert missing.status_code == 404
    bad_version = segment_client.post(
        "/v1/models/regions/versions/7/segment", content=body, headers=PNG
    )
    assert bad_version.status_code == 404
    assert segment_client.post("/v1/segment", content=body, headers=PNG).status_code == 200
