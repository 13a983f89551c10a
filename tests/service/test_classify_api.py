from __future__ import annotations

import base64
import concurrent.futures
import re

import numpy as np
import pytest

from tests.helpers import encode, histogram_sum_count, solid
from tests.service.test_imaging import png_bomb

RED, GREEN, BLUE = (220, 20, 20), (20, 220, 20), (20, 20, 220)


def top_label(response) -> str:
    return response.json()["predictions"][0][0]["label"]


def test_classify_real_jpeg(client, photo):
    response = client.post(
        "/v1/classify", content=encode(photo, "JPEG"), headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "colours" and body["version"] == 1
    scores = [p["score"] for p in body["predictions"][0]]
    assert len(scores) == 3  # the default of 5 is capped at the number of classes
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    # The tabby cat photo is brownish: red dominates the mean colour.
    mean_rgb = photo.reshape(-1, 3).mean(axis=0)
    assert top_label(response) == ["red", "green", "blue"][int(np.argmax(mean_rgb))]


def test_classify_png_raw_body(client):
    response = client.post(
        "/v1/classify?top_k=1",
        content=encode(solid(BLUE), "PNG"),
        headers={"Content-Type": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [
        [{"label": "blue", "index": 2, "score": pytest.approx(1.0, abs=1e-3)}]
    ]


def test_multipart_with_three_images_keeps_their_order(client):
    files = [
        ("file", (f"{i}.png", encode(solid(c), "PNG"), "image/png"))
        for i, c in enumerate([GREEN, RED, BLUE])
    ]
    response = client.post("/v1/classify", files=files, params={"top_k": 2})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p[0]["label"] for p in predictions] == ["green", "red", "blue"]
    assert all(len(p) == 2 for p in predictions)


def test_base64_json_single_and_list(client):
    red = base64.b64encode(encode(solid(RED), "JPEG")).decode()
    green = base64.b64encode(encode(solid(GREEN), "WEBP")).decode()
    single = client.post("/v1/classify", json={"image": {"b64": red}})
    assert single.status_code == 200, single.text
    assert top_label(single) == "red"
    several = client.post("/v1/classify", json={"images": [{"b64": green}, {"b64": red}]})
    assert [p[0]["label"] for p in several.json()["predictions"]] == ["green", "red"]


def test_named_model_and_version_routes(client):
    body = encode(solid(GREEN), "PNG")
    for url in (
        "/v1/models/colours/classify",
        "/v1/models/colours/versions/1/classify",
        "/v1/classify?model=colours&version=1",
    ):
        response = client.post(url, content=body, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, (url, response.text)
        assert top_label(response) == "green"


def test_top_k_is_bounded_by_the_number_of_classes(client):
    body = encode(solid(RED), "PNG")
    headers = {"Content-Type": "image/png"}
    assert client.post("/v1/classify?top_k=3", content=body, headers=headers).status_code == 200
    response = client.post("/v1/classify?top_k=4", content=body, headers=headers)
    assert response.status_code == 400  # the model's limit: its 3 classes
    assert response.json()["error"]["code"] == "bad_request"
    for bad in ("0", "-1", "x"):  # the fixed bound, in the parameter model
        response = client.post(f"/v1/classify?top_k={bad}", content=body, headers=headers)
        assert response.status_code == 422, bad
        assert "top_k" in response.json()["error"]["message"]


def _huge_body() -> bytes:
    return b"\xff\xd8" + b"\x00" * (17 * 1024 * 1024)


BAD_REQUESTS = [
    # (description, request kwargs, status, error code)
    ("empty body", {"content": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "bad_request"),
    (
        "text named png",
        {"files": {"file": ("a.png", b"hello, world\n", "image/png")}},
        400,
        "invalid_image",
    ),
    (
        "wrong content type",
        {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    (
        "curl default form type",
        {"content": b"x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415,
        "unsupported_media_type",
    ),
    ("bad base64", {"json": {"image": {"b64": "not base64!!"}}}, 400, "bad_request"),
    (
        "broken json",
        {"content": b'{"image":', "headers": {"Content-Type": "application/json"}},
        400,
        "bad_request",
    ),
    ("json wrong shape", {"json": {"image": "abc"}}, 422, "invalid_request"),
    ("json no image", {"json": {}}, 400, "bad_request"),
    (
        "multipart without file",
        {"data": {"other": "x"}, "files": {"x": ("a", b"1")}},
        400,
        "bad_request",
    ),
    (
        "png bomb",
        {"content": png_bomb(), "headers": {"Content-Type": "image/png"}},
        413,
        "payload_too_large",
    ),
    (
        "body over limit",
        {"content": _huge_body(), "headers": {"Content-Type": "image/jpeg"}},
        413,
        "payload_too_large",
    ),
    (
        "tiff",
        {"content": None, "headers": {"Content-Type": "image/png"}},
        415,
        "unsupported_media_type",
    ),
]


@pytest.mark.parametrize(
    "description, kwargs, status, code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_input_gets_a_clear_4xx(client, photo, description, kwargs, status, code):
    if description == "tiff":
        kwargs = {**kwargs, "content": encode(photo, "TIFF")}
    response = client.post("/v1/classify", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    # ... and the server keeps answering.
    ok = client.post(
        "/v1/classify", content=encode(solid(RED), "PNG"), headers={"Content-Type": "image/png"}
    )
    assert ok.status_code == 200


def test_truncated_jpeg_and_one_pixel_image(client, photo):
    jpeg = encode(photo, "JPEG")
    headers = {"Content-Type": "image/jpeg"}
    truncated = client.post("/v1/classify", content=jpeg[:5000], headers=headers)
    assert truncated.status_code == 400
    assert truncated.json()["error"]["code"] == "invalid_image"
    tiny = client.post("/v1/classify", content=encode(solid(BLUE, (1, 1)), "PNG"), headers=headers)
    assert tiny.status_code == 200 and top_label(tiny) == "blue"


def test_too_many_images_is_413(repository):
    from tests.helpers import make_settings, start_client, wait_ready

    with start_client(make_settings(repository, max_images_per_request=2)) as client:
        wait_ready(client)
        files = [("file", (f"{i}.png", encode(solid(RED), "PNG"), "image/png")) for i in range(3)]
        response = client.post("/v1/classify", files=files)
        assert response.status_code == 413


@pytest.mark.parametrize(
    "url, status, code",
    [
        ("/v1/models/nope/classify", 404, "model_not_found"),
        ("/v1/classify?model=nope", 404, "model_not_found"),
        ("/v1/models/colours/versions/7/classify", 404, "version_not_found"),
        ("/v1/models/colours/versions/abc/classify", 400, "bad_request"),
        ("/v1/models/colours/versions/0/classify", 400, "bad_request"),
        ("/v1/classify?version=-3", 400, "bad_request"),
        ("/v1/nothing-here", 404, "not_found"),
    ],
)
def test_unknown_model_or_version(client, url, status, code):
    response = client.post(
        url, content=encode(solid(RED), "PNG"), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_request_id_is_echoed_or_made(client):
    body, headers = encode(solid(RED), "PNG"), {"Content-Type": "image/png"}
    echoed = client.post("/v1/classify", content=body, headers={**headers, "X-Request-ID": "abc-1"})
    assert echoed.headers["X-Request-ID"] == "abc-1"
    made = client.post("/v1/classify", content=body, headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    assert client.post("/v1/classify", content=b"", headers=headers).headers["X-Request-ID"]


def test_concurrent_requests_are_batched_and_measured(repository):
    from service.settings import BatchingOverride
    from tests.helpers import make_settings, start_client, wait_ready

    settings = make_settings(repository, batching=BatchingOverride(max_delay_ms=100))
    with start_client(settings) as client:
        wait_ready(client)
        body, headers = encode(solid(GREEN), "PNG"), {"Content-Type": "image/png"}
        with concurrent.futures.ThreadPoolExecutor(16) as threads:
            responses = list(
                threads.map(
                    lambda _: client.post("/v1/classify", content=body, headers=headers), range(32)
                )
            )
        assert all(r.status_code == 200 and top_label(r) == "green" for r in responses)
        text = client.get("/metrics").text
    total, calls = histogram_sum_count(text, "kerve_batch_size", "colours")
    assert total == 32
    assert total / calls > 1  # mean batch size: requests shared model calls
    for name in ("kerve_queue_wait_seconds", "kerve_inference_seconds", "kerve_preprocess_seconds"):
        assert histogram_sum_count(text, name, "colours")[1] > 0
    assert re.search(
        r'kerve_request_duration_seconds_count\{method="POST",model="colours",'
        r'route="/v1/classify",status="200",task="classify",version="1"\} 32',
        text,
    )
    assert 'kerve_model_loaded{model="colours",version="1"} 1.0' in text
    assert 'kerve_queue_depth{model="colours",version="1"} 0.0' in text


def test_logits_models_get_softmax_scores(tmp_path):
    from tests.helpers import (
        build_colour_classifier,
        colour_manifest,
        make_settings,
        start_client,
        wait_ready,
    )
    from training import export

    manifest = colour_manifest().model_copy(update={"output": "logits"})
    export.publish(build_colour_classifier(activation="linear"), manifest, tmp_path, "logits")
    with start_client(make_settings(tmp_path)) as client:
        wait_ready(client)
        response = client.post(
            "/v1/classify",
            content=encode(solid(GREEN), "PNG"),
            headers={"Content-Type": "image/png"},
        )
    scores = {p["label"]: p["score"] for p in response.json()["predictions"][0]}
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
    # logits are 10 * mean colour in [0, 1]: softmax of (0.78, 8.63, 0.78)
    assert scores["green"] == pytest.approx(1 / (1 + 2 * np.exp(-10 * 200 / 255)), abs=1e-4)
