"""POST /v1/generate against tiny real conditional generators (tests/helpers.py)."""

from __future__ import annotations

import base64
import concurrent.futures
import io

import numpy as np
import pytest
from PIL import Image

from service.batching import BatchConfig
from service.errors import BadRequest
from service.metrics import Metrics
from service.runtimes.generation import (
    MAX_SEED,
    RANDOM_SEEDS,
    GenerateRequest,
    GenerationRuntime,
    latent_vector,
)
from service.settings import BatchingOverride
from tests.helpers import (
    GENERATOR_LABELS,
    GENERATOR_SIZE,
    LATENT_DIM,
    batch_counts,
    build_tiny_generator,
    generation_manifest,
    make_settings,
    publish_colour_classifier,
    publish_generator,
    start_client,
    until_requests_share_a_call,
    wait_ready,
    wait_until,
)

RGB_SIZE = 8
MAX_IMAGES = 32  # the test server's max_images_per_request, below the route's 64


@pytest.fixture(scope="module")
def generate_repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate") / "models"
    publish_generator(root, "generator")
    publish_generator(root, "rgb-generator", channels=3, size=RGB_SIZE)
    publish_generator(root, "split-generator", max_batch_size=4)
    publish_generator(root, "small-queue", max_queue=5)
    publish_colour_classifier(root)
    return root


@pytest.fixture(scope="module")
def generate_client(generate_repository):
    settings = make_settings(generate_repository, max_images_per_request=MAX_IMAGES)
    with start_client(settings) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def batching_client(generate_repository):
    """Batches wait up to 200 ms for more samples, so concurrent requests share them."""
    settings = make_settings(generate_repository, batching=BatchingOverride(max_delay_ms=200))
    with start_client(settings) as client:
        wait_ready(client)
        yield client


def generate(client, url: str = "/v1/generate", **body) -> dict:
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def decoded(image: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image["b64"])))


def pixels(found: dict) -> list[np.ndarray]:
    return [np.asarray(decoded(image)) for image in found["images"]]


def expected_images(seeds, label: int, channels: int = 1, size: int = GENERATOR_SIZE):
    """What the served images must be: the builder's model run directly, scaled to pixels."""
    latents = np.stack([latent_vector(seed, LATENT_DIM) for seed in seeds])
    labels = np.full((len(seeds), 1), label, np.int32)
    outputs = build_tiny_generator(channels, size).predict_on_batch([latents, labels])
    images = np.clip(np.rint(np.asarray(outputs) * 127.5 + 127.5), 0, 255).astype(np.uint8)
    return images[..., 0] if channels == 1 else images


def test_same_seed_and_label_give_the_same_png(generate_client):
    first = generate(generate_client, label="square", count=2, seed=7)
    assert generate(generate_client, label="square", count=2, seed=7)["images"] == first["images"]
    assert (first["label"], first["label_index"], first["seed"]) == ("square", 1, 7)
    assert [image["seed"] for image in first["images"]] == [7, 8]
    other_seed = generate(generate_client, label="square", seed=8)
    assert other_seed["images"][0] == first["images"][1]  # image i is seed + i
    assert not np.array_equal(pixels(other_seed)[0], pixels(first)[0])
    other_label = generate(generate_client, label="cross", count=2, seed=7)
    for served, other in zip(pixels(first), pixels(other_label), strict=True):
        assert np.abs(served.astype(int) - other).mean() > 5


def test_label_by_name_index_or_any_case_is_the_same(generate_client):
    by_name = generate(generate_client, label="ring", seed=3)
    for label in (3, "RING", "Ring"):
        found = generate(generate_client, label=label, seed=3)
        assert (found["label"], found["label_index"]) == ("ring", 3)
        assert found["images"] == by_name["images"], label


def test_served_images_are_the_models_output_scaled_as_the_manifest_says(generate_client):
    found = generate(generate_client, label="circle", count=4, seed=1000)
    assert np.array_equal(np.stack(pixels(found)), expected_images(range(1000, 1004), label=0))
    assert all(decoded(image).mode == "L" for image in found["images"])
    colour = generate(generate_client, "/v1/models/rgb-generator/generate", label=2, count=4)
    seeds = range(colour["seed"], colour["seed"] + 4)
    wanted = expected_images(seeds, label=2, channels=3, size=RGB_SIZE)
    assert np.array_equal(np.stack(pixels(colour)), wanted)


@pytest.mark.parametrize(
    ("name", "size", "mode"),
    [("generator", GENERATOR_SIZE, "L"), ("rgb-generator", RGB_SIZE, "RGB")],
)
def test_images_have_the_manifests_size_and_mode(generate_client, name, size, mode):
    found = generate(generate_client, f"/v1/models/{name}/generate", label="cross", count=3)
    assert (found["width"], found["height"], found["mode"]) == (size, size, mode)
    assert found["model"] == name and found["version"] == 1 and len(found["images"]) == 3
    for image in found["images"]:
        assert decoded(image).size == (size, size) and decoded(image).mode == mode


def test_one_request_for_eight_equals_eight_requests_for_one(generate_client):
    together = pixels(generate(generate_client, label="square", count=8, seed=100))
    for i in range(8):
        alone = pixels(generate(generate_client, label="square", seed=100 + i))[0]
        assert np.array_equal(alone, together[i]), i


@pytest.mark.parametrize(("name", "max_batch_size"), [("generator", 32), ("split-generator", 4)])
def test_images_do_not_depend_on_how_requests_are_batched(batching_client, name, max_batch_size):
    url = f"/v1/models/{name}/generate"
    samples_before, calls_before = batch_counts(batching_client, name)
    together = pixels(generate(batching_client, url, label="circle", count=8, seed=500))
    samples, calls = batch_counts(batching_client, name)
    # The batcher may split further where the times measured at load say smaller
    # batches cost less per sample; never into calls over the maximum.
    assert samples - samples_before == 8 and calls - calls_before >= -(-8 // max_batch_size)

    def ask(request):
        count, seed = request
        return pixels(generate(batching_client, url, label="circle", count=count, seed=seed))

    def send_together(requests):
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as threads:
            results = [image for found in threads.map(ask, requests) for image in found]
        for i, (alone_image, reference) in enumerate(zip(results, together, strict=True)):
            assert np.array_equal(alone_image, reference), (requests, i)

    # Requests split across batches: 3 + 5 samples, batches of at most 4 or 32.
    send_together([(3, 500), (5, 503)])
    # Eight single requests would take eight model calls one by one.
    singles = [(1, 500 + i) for i in range(8)]
    until_requests_share_a_call(
        lambda: send_together(singles),
        lambda: batch_counts(batching_client, name),
        samples=8,
        alone=8,
    )


def grid_of(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("image/png;q=0, application/json", "application/json"),  # q=0: not acceptable
        ("image/png;q=0", "application/json"),
        ("application/json;q=0.5, image/png", "image/png"),
        ("application/json, image/png", "application/json"),  # a tie: the first listed
        ("image/png, application/json", "image/png"),
        ("image/*;q=0.9, application/json;q=0.8", "image/png"),
        ("image/*, image/png;q=0, application/json;q=0.1", "application/json"),  # most specific
        ("*/*", "application/json"),
        ("", "application/json"),
    ],
)
def test_accept_q_values_choose_png_or_json(generate_client, accept, media_type):
    """Issue 22, finding 8: `Accept: image/png;q=0, application/json` returned a PNG."""
    response = generate_client.post(
        "/v1/generate", json={"label": 0, "seed": 3}, headers={"Accept": accept}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == media_type


def test_accept_png_returns_one_grid_of_the_images(generate_client):
    body = {"label": "cross", "count": 5, "seed": 40}
    response = generate_client.post("/v1/generate", json=body, headers={"Accept": "image/png"})
    grid = grid_of(response)
    assert response.headers["X-Kerve-Seed"] == "40"
    # 5 images: rows of ceil(sqrt(5)) = 3, so 3 x 2 cells of 12 pixels, 2 pixels apart.
    assert (grid.size, grid.mode) == ((3 * 12 + 2 * 2, 2 * 12 + 2), "L")
    cells = np.asarray(grid)
    images = pixels(generate(generate_client, **body))
    for i, image in enumerate(images):
        row, column = divmod(i, 3)
        top, left = row * 14, column * 14
        assert np.array_equal(cells[top : top + 12, left : left + 12], image), i
    assert (cells[:, 12:14] == 0).all() and (cells[12:14] == 0).all()
    assert (cells[14:, 28:] == 0).all()  # the sixth cell is empty
    one = generate_client.post(
        "/v1/models/rgb-generator/generate",
        json={"label": 0, "seed": 1},
        headers={"Accept": "image/png"},
    )
    assert (grid_of(one).size, grid_of(one).mode) == ((RGB_SIZE, RGB_SIZE), "RGB")


@pytest.mark.parametrize(("count", "size"), [(1, (12, 12)), (4, (26, 26)), (10, (54, 40))])
def test_grid_size_follows_the_count(generate_client, count, size):
    response = generate_client.post(
        "/v1/generate", json={"label": 1, "count": count}, headers={"Accept": "image/png"}
    )
    assert grid_of(response).size == size


def test_an_omitted_seed_is_drawn_and_reported(generate_client):
    first = generate(generate_client, label="circle", count=2)
    second = generate(generate_client, label="circle", count=2)
    assert 0 <= first["seed"] < RANDOM_SEEDS and first["seed"] != second["seed"]
    assert [image["seed"] for image in first["images"]] == [first["seed"], first["seed"] + 1]
    again = generate(generate_client, label="circle", count=2, seed=first["seed"])
    assert again["images"] == first["images"]
    png = generate_client.post("/v1/generate", json={"label": 0}, headers={"Accept": "image/png"})
    seed = int(png.headers["X-Kerve-Seed"])
    assert np.array_equal(
        np.asarray(grid_of(png)), pixels(generate(generate_client, label=0, seed=seed))[0]
    )


@pytest.mark.parametrize("truncation", [0.1, 0.5, 1.0, 2.0, 4.0])
def test_truncated_latents_are_bounded_deterministic_and_keep_their_inside_values(truncation):
    for seed in range(20):
        plain = latent_vector(seed, 256)
        truncated = latent_vector(seed, 256, truncation)
        assert truncated.dtype == np.float32 and truncated.shape == (256,)
        assert np.abs(truncated).max() <= truncation
        assert np.array_equal(truncated, latent_vector(seed, 256, truncation))
        inside = np.abs(plain) <= truncation
        assert np.array_equal(truncated[inside], plain[inside])
        assert (truncated[~inside] != plain[~inside]).all()


def test_a_plain_latent_is_numpys_standard_normal_from_the_seed():
    expected = np.random.default_rng(12345).standard_normal(64, dtype=np.float32)
    assert np.array_equal(latent_vector(12345, 64), expected)
    assert np.array_equal(latent_vector(MAX_SEED + 63, 4), latent_vector(MAX_SEED + 63, 4))
    with pytest.raises(ValueError, match="truncation"):
        latent_vector(0, 8, truncation=0.0)


def test_truncation_changes_images_deterministically(generate_client):
    plain = generate(generate_client, label="ring", count=4, seed=9)
    truncated = generate(generate_client, label="ring", count=4, seed=9, truncation=0.3)
    assert truncated["truncation"] == 0.3 and plain["truncation"] is None
    again = generate(generate_client, label="ring", count=4, seed=9, truncation=0.3)
    assert again["images"] == truncated["images"]
    assert all(a != b for a, b in zip(plain["images"], truncated["images"], strict=True))
    # Small latents make images close to the class's average: less spread between them.
    assert np.std(pixels(truncated), axis=0).mean() < np.std(pixels(plain), axis=0).mean()


def test_integers_may_come_as_integral_numbers_as_json_schema_allows(generate_client):
    """7 and 7.0 are one JSON number; "7" (a label's name) and 7.5 are not integers."""
    as_floats = generate(generate_client, label=1.0, count=2.0, seed=7.0)
    as_ints = generate(generate_client, label=1, count=2, seed=7)
    assert as_floats["images"] == as_ints["images"] and as_floats["seed"] == 7


LABELS_IN_MESSAGE = "0 'circle', 1 'square', 2 'cross', 3 'ring'"


@pytest.mark.parametrize(
    ("description", "url", "body", "status", "code", "message"),
    [
        ("count 0", "/v1/generate", {"label": 0, "count": 0}, 422, "invalid_request", "count"),
        ("count 65", "/v1/generate", {"label": 0, "count": 65}, 422, "invalid_request", "count"),
        ("count as text", "/v1/generate", {"label": 0, "count": "2"}, 422, "invalid_request",
         "count"),
        ("over max_images_per_request", "/v1/generate", {"label": 0, "count": MAX_IMAGES + 1},
         413, "payload_too_large", "at most 32 per request"),
        ("over the model's queue", "/v1/models/small-queue/generate", {"label": 0, "count": 6},
         413, "payload_too_large", "queues at most 5"),
        ("unknown label", "/v1/generate", {"label": "sneaker"}, 400, "bad_request",
         LABELS_IN_MESSAGE),
        ("index too large", "/v1/generate", {"label": 4}, 400, "bad_request", "no label 4"),
        ("index 10", "/v1/generate", {"label": 10}, 400, "bad_request", LABELS_IN_MESSAGE),
        ("negative index", "/v1/generate", {"label": -1}, 400, "bad_request", "from 0 to 3"),
        ("a bool", "/v1/generate", {"label": True}, 400, "bad_request", "no label True"),
        ("a fractional index", "/v1/generate", {"label": 1.5}, 422, "invalid_request", "label"),
        ("a fractional count", "/v1/generate", {"label": 0, "count": 2.5}, 422,
         "invalid_request", "count"),
        ("no label", "/v1/generate", {"count": 2}, 422, "invalid_request", "label"),
        ("negative seed", "/v1/generate", {"label": 0, "seed": -1}, 422, "invalid_request",
         "seed"),
        ("seed too large", "/v1/generate", {"label": 0, "seed": MAX_SEED + 1}, 422,
         "invalid_request", "seed"),
        ("truncation too small", "/v1/generate", {"label": 0, "truncation": 0.05}, 422,
         "invalid_request", "truncation"),
        ("truncation too large", "/v1/generate", {"label": 0, "truncation": 4.5}, 422,
         "invalid_request", "truncation"),
        ("extra field", "/v1/generate", {"label": 0, "colour": "red"}, 422, "invalid_request",
         "colour"),
        ("a classifier", "/v1/models/colours/generate", {"label": 0}, 400, "wrong_task",
         "serves classification, not generation"),
        ("unknown model", "/v1/generate?model=nope", {"label": 0}, 404, "model_not_found",
         "nope"),
        ("unknown version", "/v1/models/generator/versions/9/generate", {"label": 0}, 404,
         "version_not_found", "no version 9"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_clear_4xx(
    generate_client, description, url, body, status, code, message
):
    response = generate_client.post(url, json=body)
    assert response.status_code == status, (description, response.text)
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"], (description, error)


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{label: 1", "application/json", 400, "bad_request"),
        (b"", "application/json", 400, "bad_request"),
        (b"label=1", "text/plain", 415, "unsupported_media_type"),
        (b'{"label": 1}', "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_a_body_that_is_not_json_is_refused_as_image_routes_refuse_theirs(
    generate_client, content, content_type, status, code
):
    """400 for malformed or missing JSON, 415 for another content type; 422 is for
    JSON of the wrong shape (the table above)."""
    response = generate_client.post(
        "/v1/generate", content=content, headers={"Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_a_long_label_list_is_cut_short_in_errors():
    labels = [f"class-{i}" for i in range(30)]
    runtime = GenerationRuntime(
        "many", 1, build_tiny_generator(num_classes=30), generation_manifest(labels=labels),
        batching=BatchConfig(), metrics=Metrics().for_model("many", 1), max_image_pixels=10**6,
    )  # fmt: skip
    assert runtime.label_index("CLASS-29") == 29
    with pytest.raises(BadRequest, match=r"19 'class-19', \.\.\. \(30 in all\)$"):
        runtime.preprocess(GenerateRequest(label="class-30"))


def test_no_generator_loaded_is_404(client):
    response = client.post("/v1/generate", json={"label": 0})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no generation model is loaded"


def test_broken_generators_fail_to_load_and_the_rest_serve(tmp_path):
    root = tmp_path / "models"
    publish_generator(root, "generator")
    publish_generator(root, "wrong-size", model=build_tiny_generator(size=8))
    publish_generator(root, "wrong-channels", channels=3, model=build_tiny_generator(channels=1))
    publish_generator(root, "wrong-latent", latent_dim=16)
    publish_generator(root, "wrong-latent", latent_dim=16, model=build_tiny_generator())
    with start_client(make_settings(root)) as client:
        wait_until(lambda: client.get("/readyz").json()["initial_load_done"])
        failed = client.get("/readyz").json()["failed"]
        assert set(failed) == {"wrong-size", "wrong-channels", "wrong-latent"}
        assert "shape (8, 8, 1), the manifest's input says (12, 12, 1)" in failed["wrong-size"]["1"]
        assert (
            "shape (12, 12, 1), the manifest's input says (12, 12, 3)"
            in failed["wrong-channels"]["1"]
        )
        assert "inputs are shaped [(None, 8), (None, 1)]" in failed["wrong-latent"]["2"]
        assert generate(client, label="ring")["model"] == "generator"
        broken = client.post("/v1/models/wrong-size/generate", json={"label": 0})
        assert broken.status_code == 503
        # wrong-latent's version 1 (a 16-wide model) serves; its broken version 2 does not.
        assert generate(client, "/v1/models/wrong-latent/generate", label=0)["version"] == 1


def test_metadata_lists_a_generators_labels_and_latent_space(generate_client):
    listing = {m["name"]: m for m in generate_client.get("/v1/models").json()["models"]}
    listed = listing["generator"]["versions"][0]
    assert listed["task"] == "generation" and listed["labels"] == GENERATOR_LABELS
    assert listed["generation"] == {"latent_dim": LATENT_DIM}
    assert listed["input"]["height"] == listed["input"]["width"] == GENERATOR_SIZE
    assert "provenance" not in listed  # the listing stays short
    assert "labels" not in listing["colours"]["versions"][0]
    detail = generate_client.get("/v1/models/rgb-generator").json()["versions"][0]
    assert detail["labels"] == GENERATOR_LABELS and detail["input"]["channels"] == 3


def test_openapi_documents_the_generate_routes(generate_client):
    paths = generate_client.get("/openapi.json").json()["paths"]
    routes = {
        "/v1/generate": "Generate images of one class",
        "/v1/models/{name}/generate": "newest version of one model",
        "/v1/models/{name}/versions/{version}/generate": "one exact model version",
    }
    for path, description in routes.items():
        operation = paths[path]["post"]
        assert description in operation["description"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/GenerateRequest"}
    generate_request = generate_client.get("/openapi.json").json()["components"]["schemas"][
        "GenerateRequest"
    ]
    assert generate_request["examples"][0]["label"] == "sneaker"
    for path in routes:
        operation = paths[path]["post"]
        assert "image/png" in operation["responses"]["200"]["content"]
    assert generate_client.get("/docs").status_code == 200
