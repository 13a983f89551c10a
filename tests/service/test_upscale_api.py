"""POST /v1/upscale against tiny real upscalers: nearest-neighbour (exact) and convolutional,
and the same models through /v1/models, the Open Inference Protocol v2 and TF Serving."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import re

import keras
import numpy as np
import pytest
from PIL import Image

from service import tiling
from service.batching import BatchConfig
from service.errors import PayloadTooLarge
from service.metrics import Metrics
from service.runtimes.upscaling import UpscaleRequest, UpscalingRuntime
from service.settings import BatchingOverride
from tests.helpers import (
    batch_counts,
    build_conv_upscaler,
    build_nearest_upscaler,
    encode,
    make_settings,
    noise_image,
    png,
    post_for_image,
    publish_colour_classifier,
    publish_upscaler,
    start_client,
    until_requests_share_a_call,
    upscaling_manifest,
    wait_ready,
    wait_until,
)

PNG = {"Content-Type": "image/png"}
TILE, MARGIN = 32, 4  # the test models' tiles: 24-pixel centres
CENTRE = TILE - 2 * MARGIN
QUEUE = 4096  # samples: room for the tiles of the largest test image


@pytest.fixture(scope="module")
def upscale_repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscale") / "models"
    publish_upscaler(root, "upscaler", scale=2, max_queue=QUEUE)  # the task's default: first
    publish_upscaler(root, "upscaler-3x", scale=3, max_queue=QUEUE)
    publish_upscaler(root, "upscaler-4x", scale=4, max_queue=QUEUE)
    publish_upscaler(root, "upscaler-gray", channels=1, max_queue=QUEUE)
    publish_upscaler(root, "upscaler-conv", model=build_conv_upscaler(layers=3), max_queue=QUEUE)
    publish_upscaler(root, "upscaler-conv-thin", model=build_conv_upscaler(layers=3), margin=1)
    publish_colour_classifier(root)
    return root


@pytest.fixture(scope="module")
def client(upscale_repository):
    with start_client(make_settings(upscale_repository)) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def batching_client(upscale_repository):
    """Batches wait up to 200 ms for more samples, so concurrent requests share them."""
    settings = make_settings(upscale_repository, batching=BatchingOverride(max_delay_ms=200))
    with start_client(settings) as client:
        wait_ready(client)
        yield client


def upscale(client, body: bytes, url: str = "/v1/upscale", **params) -> tuple[dict, Image.Image]:
    return post_for_image(client, body, url, **params)


def tiles_for(width: int, height: int, centre: int = CENTRE) -> int:
    return -(-width // centre) * -(-height // centre)


def repeated(pixels: np.ndarray, scale: int) -> np.ndarray:
    """What the nearest-neighbour upscaler makes of ``pixels``."""
    return np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)


def runtime_of(manifest, model, **batching) -> UpscalingRuntime:
    return UpscalingRuntime(
        "direct", 1, model, manifest, batching=BatchConfig(**batching),
        metrics=Metrics().for_model("direct", 1), max_image_pixels=10**6,
    )  # fmt: skip


# -- tiling with a scale, without a model ------------------------------------------------
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_stitching_places_scaled_centres_at_scaled_positions(scale):
    planes = np.random.default_rng(1).integers(0, 256, (2, 17, 30, 1), dtype=np.uint8)
    grid = tiling.TileGrid(17, 30, 2, 10, 10, 3, scale)
    tiles = np.empty((grid.num_tiles, 10, 10, 1), np.uint8)
    tiling.cut_tiles(planes, grid, tiles)
    centres = repeated(tiles[:, 3:7, 3:7].transpose(1, 2, 0, 3), scale).transpose(2, 0, 1, 3)
    image = tiling.stitch_tiles(np.ascontiguousarray(centres), grid)
    assert (grid.out_height, grid.out_width) == (17 * scale, 30 * scale)
    assert image.shape == (17 * scale, 30 * scale, 2)
    assert np.array_equal(image, repeated(planes[..., 0].transpose(1, 2, 0), scale))


# -- the task route ----------------------------------------------------------------------
@pytest.mark.parametrize(("name", "scale"), [("upscaler", 2), ("upscaler-3x", 3),
                                             ("upscaler-4x", 4)])  # fmt: skip
@pytest.mark.parametrize("size", [(1, 1), (1, 50), (50, 1), (7, 300), (61, 47)])
def test_nearest_upscalers_repeat_every_pixel(client, name, scale, size):
    """Sizes not a multiple of the 24-pixel centre, one pixel wide or high, and 2x, 3x, 4x."""
    for mode in ("RGB", "L"):
        image = noise_image(*size, mode, seed=sum(size))
        found, output = upscale(client, png(image), f"/v1/models/{name}/upscale")
        width, height = size[0] * scale, size[1] * scale
        assert (found["model"], found["version"], found["scale"]) == (name, 1, scale)
        assert (found["width"], found["height"]) == output.size == (width, height)
        assert found["mode"] == output.mode == mode
        assert found["tiles"] == tiles_for(*size)
        assert np.array_equal(np.asarray(output), repeated(np.asarray(image), scale))


def test_a_gray_model_upscales_colour_as_three_planes(client):
    for mode, planes in (("RGB", 3), ("L", 1)):
        image = noise_image(50, 30, mode, seed=2)
        found, output = upscale(client, png(image), "/v1/models/upscaler-gray/upscale")
        assert found["mode"] == output.mode == mode and output.size == (100, 60)
        assert found["tiles"] == planes * tiles_for(50, 30)
        assert np.array_equal(np.asarray(output), repeated(np.asarray(image), 2))


def test_other_modes_come_back_as_rgb_or_l(client):
    rgba = np.asarray(noise_image(45, 30, seed=1).convert("RGBA")).copy()
    rgba[:10, :, 3] = 0  # transparent: white after compositing
    gray16 = np.random.default_rng(2).integers(0, 65536, (30, 45), dtype=np.uint16)
    for source, mode in ((Image.fromarray(rgba, "RGBA"), "RGB"), (Image.fromarray(gray16), "L")):
        found, output = upscale(client, png(source))
        assert found["mode"] == output.mode == mode and output.size == (90, 60)
    assert (np.asarray(upscale(client, png(Image.fromarray(rgba, "RGBA")))[1])[:20] == 255).all()


def test_input_forms_routes_and_raw_png(client):
    image = noise_image(50, 40, seed=5)
    body = png(image)
    as_raw, _ = upscale(client, body)
    assert as_raw["model"] == "upscaler" and as_raw["version"] == 1  # the task's default
    files = [("file", ("a.png", body, "image/png"))]
    as_form = client.post("/v1/models/upscaler/versions/1/upscale", files=files).json()
    as_json = client.post(
        "/v1/upscale?model=upscaler&version=1",
        json={"image": {"b64": base64.b64encode(body).decode()}},
    ).json()
    assert as_raw["image"] == as_form["image"] == as_json["image"]
    raw = client.post(
        "/v1/models/upscaler-3x/upscale", content=body, headers={**PNG, "Accept": "image/png"}
    )
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    output = np.asarray(Image.open(io.BytesIO(raw.content)))
    assert np.array_equal(output, repeated(np.asarray(image), 3))
    jpeg = client.post(
        "/v1/models/upscaler-4x/upscale", content=encode(np.asarray(image), "JPEG"),
        headers={"Content-Type": "image/jpeg"},
    )  # fmt: skip
    assert jpeg.status_code == 200 and (jpeg.json()["width"], jpeg.json()["height"]) == (200, 160)


def test_stitched_tiles_equal_the_whole_image_at_once(client):
    """The margin (4) covers the receptive radius of three 3x3 convolutions (3): no seams."""
    height, width = 110, 150  # 5 x 7 tiles
    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([xx * 1.5, yy * 2.0, 128 + 60 * np.sin(xx / 9) * np.cos(yy / 7)], axis=-1)
    pixels = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    body = encode(pixels, "PNG")
    found, output = upscale(client, body, "/v1/models/upscaler-conv/upscale")
    assert found["tiles"] == 35 and output.size == (300, 220)
    whole = build_conv_upscaler(layers=3).predict_on_batch(pixels[np.newaxis] / 255.0)[0]
    reference = np.clip(np.rint(whole * 255), 0, 255).astype(int)
    served = np.asarray(output).astype(int)
    inner = (slice(6, -6), slice(6, -6))  # the whole-image run pads its border with zeros
    assert np.abs(served[inner] - reference[inner]).max() <= 1
    assert np.abs(served - repeated(pixels, 2)).mean() > 10  # the model does more than repeat
    assert 0.005 < (served == 0).mean() + (served == 255).mean() < 0.2  # and is not saturated
    # A margin of 1 (centres of 30) misses context: errors 2 input px either side of seams.
    thin = upscale(client, body, "/v1/models/upscaler-conv-thin/upscale")[1]
    error = np.abs(np.asarray(thin).astype(int) - reference).max(axis=-1)[inner]
    oy, ox = np.mgrid[0 : 2 * height, 0 : 2 * width] // 2  # input pixel of each output pixel
    near_seam = ((oy + 2) % 30 < 4) | ((ox + 2) % 30 < 4)
    assert error.max() > 10 and (error[~near_seam[inner]] <= 1).all()


def test_tiles_of_concurrent_requests_share_batches(batching_client):
    sizes = [(40, 40), (30, 70), (90, 20), (24, 24), (60, 50), (5, 100)]
    images = [noise_image(w, h, seed=10 + i) for i, (w, h) in enumerate(sizes)]

    def ask(image):
        return upscale(batching_client, png(image), "/v1/models/upscaler/upscale")

    def send_together():
        with concurrent.futures.ThreadPoolExecutor(len(images)) as threads:
            results = list(threads.map(ask, images))
        for image, (_, output) in zip(images, results, strict=True):
            assert np.array_equal(np.asarray(output), repeated(np.asarray(image), 2))

    # One by one, each request would be at least one model call of its own.
    until_requests_share_a_call(
        send_together,
        lambda: batch_counts(batching_client, "upscaler"),
        samples=sum(tiles_for(w, h) for w, h in sizes),
        alone=len(sizes),
    )


# -- limits and errors -------------------------------------------------------------------
def test_an_image_of_more_tiles_than_the_queue_holds_is_413():
    runtime = runtime_of(upscaling_manifest(), build_nearest_upscaler(), max_queue=10)
    # Admission weighs the request by its header, before anything is decoded.
    assert runtime.cost(UpscaleRequest(image=png(noise_image(48, 120)))).samples == 10  # 2 x 5
    with pytest.raises(PayloadTooLarge, match="is 12 tiles for model 'direct'"):
        runtime.cost(UpscaleRequest(image=png(noise_image(48, 144))))


def test_the_pixel_limit_bounds_the_upscaled_image(tmp_path):
    """max_image_pixels 4000: a 2x upscaler takes 1000 input pixels, a 4x one 250."""
    root = tmp_path / "models"
    publish_upscaler(root, "upscaler")
    publish_upscaler(root, "upscaler-4x", scale=4)
    with start_client(make_settings(root, max_image_pixels=4000)) as client:
        wait_ready(client)
        assert upscale(client, png(noise_image(40, 25)))[0]["width"] == 80
        refused = client.post("/v1/upscale", content=png(noise_image(40, 26)), headers=PNG)
        assert refused.status_code == 413
        error = refused.json()["error"]
        assert error["code"] == "payload_too_large"
        assert "40x26 = 1040 pixels; the limit is 1000" in error["message"]
        assert "upscales 2x, and an upscaled image may hold at most 4000" in error["message"]
        url = "/v1/models/upscaler-4x/upscale"
        assert upscale(client, png(noise_image(25, 10)), url)[0]["width"] == 100
        assert client.post(url, content=png(noise_image(26, 10)), headers=PNG).status_code == 413


TWO_FILES = {
    "files": [("file", ("a.png", b"x", "image/png")), ("file", ("b.png", b"y", "image/png"))]
}


@pytest.mark.parametrize(
    ("description", "url", "kwargs", "status", "code", "message"),
    [
        ("not an image", "/v1/upscale", {"content": b"garbage", "headers": PNG}, 400,
         "invalid_image", "not a decodable image"),
        ("truncated", "/v1/upscale", {"content": png(noise_image(20, 20))[:80], "headers": PNG},
         400, "invalid_image", "truncated or corrupt"),
        ("empty body", "/v1/upscale", {"content": b"", "headers": PNG}, 400, "bad_request",
         "no image"),
        ("two images", "/v1/upscale", TWO_FILES, 400, "bad_request", "one image per request"),
        ("text body", "/v1/upscale", {"content": b"a=b", "headers": {"Content-Type": "text/plain"}},
         415, "unsupported_media_type", "text/plain"),
        ("a classifier", "/v1/models/colours/upscale", {}, 400, "wrong_task",
         "serves classification, not upscaling"),
        ("unknown model", "/v1/upscale?model=nope", {}, 404, "model_not_found", "nope"),
        ("unknown version", "/v1/models/upscaler/versions/9/upscale", {}, 404,
         "version_not_found", "no version 9"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_clear_4xx(client, description, url, kwargs, status, code, message):
    kwargs = kwargs or {"content": png(noise_image(20, 20)), "headers": PNG}
    response = client.post(url, **kwargs)
    assert response.status_code == status, (description, response.text)
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"], (description, error)


def test_no_upscaler_loaded_is_404(tmp_path):
    publish_colour_classifier(tmp_path)
    with start_client(make_settings(tmp_path)) as client:
        wait_ready(client)
        response = client.post("/v1/upscale", content=png(noise_image(20, 20)), headers=PNG)
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "no upscaling model is loaded"


def two_input_model() -> keras.Model:
    image, other = keras.Input((None, None, 3)), keras.Input((None, None, 3))
    summed = keras.layers.Add()([image, other])
    return keras.Model([image, other], keras.layers.UpSampling2D(2)(summed))


@pytest.mark.parametrize(
    ("model", "manifest", "message"),
    [
        (lambda: build_nearest_upscaler(2), upscaling_manifest(scale=3),
         "turned tiles of shape (32, 32, 3) into (64, 64, 3); with scale 3 they must come "
         "out (96, 96, 3)"),
        (lambda: build_nearest_upscaler(2, channels=3), upscaling_manifest(channels=1),
         "image input has 3 channels, the manifest says 1"),
        (two_input_model, upscaling_manifest(), "takes one input, the image; the model has 2"),
    ],
)  # fmt: skip
def test_validate_refuses_a_model_that_does_not_upscale_as_said(model, manifest, message):
    with pytest.raises(ValueError) as refused:
        UpscalingRuntime.validate(model(), manifest)
    assert message in str(refused.value)


def test_broken_upscalers_fail_to_load_and_the_rest_serve(tmp_path):
    root = tmp_path / "models"
    publish_upscaler(root, "upscaler")
    publish_upscaler(root, "wrong-scale", model=build_nearest_upscaler(2), scale=3)
    publish_upscaler(root, "wrong-channels", model=build_nearest_upscaler(2, 1), channels=3)
    with start_client(make_settings(root)) as client:
        wait_until(lambda: client.get("/readyz").json()["initial_load_done"])
        failed = client.get("/readyz").json()["failed"]
        assert set(failed) == {"wrong-scale", "wrong-channels"}
        assert "with scale 3 they must come out (96, 96, 3)" in failed["wrong-scale"]["1"]
        assert "1 channels, the manifest says 3" in failed["wrong-channels"]["1"]
        image = noise_image(30, 20)
        found, output = upscale(client, png(image))
        assert found["model"] == "upscaler"
        assert np.array_equal(np.asarray(output), repeated(np.asarray(image), 2))
        broken = client.post("/v1/models/wrong-scale/upscale", content=png(image), headers=PNG)
        assert broken.status_code == 503


# -- what the registry derives: listings, docs, metrics, the standard protocols -----------
def test_models_list_the_upscale_endpoints_and_openapi_the_routes(client):
    listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    model = listing["upscaler-3x"]
    (version,) = model["versions"]
    assert version["task"] == "upscaling" and version["state"] == "AVAILABLE"
    assert version["upscaling"]["scale"] == 3  # known before asking
    assert version["endpoints"] == {
        "task": "/v1/models/upscaler-3x/versions/1/upscale",
        "v2": "/v2/models/upscaler-3x/versions/1/infer",
        "tfserving": "/v1/models/upscaler-3x/versions/1:predict",
    }
    assert model["endpoints"]["task"] == "/v1/models/upscaler-3x/upscale"
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/upscale", "/v1/models/{name}/upscale",
                 "/v1/models/{name}/versions/{version}/upscale"):  # fmt: skip
        operation = paths[path]["post"]
        assert "Upscale an image of any size" in operation["description"]
        assert "image/png" in operation["responses"]["200"]["content"]


def test_metrics_label_the_upscale_route(client):
    upscale(client, png(noise_image(10, 10)), "/v1/models/upscaler-4x/upscale")
    text = client.get("/metrics").text
    labels = ('model="upscaler-4x",route="/v1/models/{name}/upscale",status="200",'
              'task="upscale",version="1"')  # fmt: skip
    assert re.search(rf"^kerve_requests_total{{{re.escape(labels)}}} [1-9]", text, re.MULTILINE)
    assert 'kerve_batch_size_count{model="upscaler-4x",version="1"}' in text


def test_v2_takes_tiles_as_numbers_and_answers_their_centres(client):
    metadata = client.get("/v2/models/upscaler").json()
    (spec,) = metadata["inputs"]
    assert (spec["datatype"], spec["shape"]) == ("UINT8", [-1, TILE, TILE, 3])
    assert "BYTES" in spec["parameters"]["encoded_images"]
    (output,) = metadata["outputs"]
    assert (output["datatype"], output["shape"]) == ("UINT8", [-1, 2 * CENTRE, 2 * CENTRE, 3])
    tiles = np.random.default_rng(7).integers(0, 256, (2, TILE, TILE, 3), dtype=np.uint8)
    request = {"inputs": [{"name": spec["name"], "datatype": "UINT8", "shape": list(tiles.shape),
                           "data": tiles.ravel().tolist()}]}  # fmt: skip
    answer = client.post("/v2/models/upscaler/versions/1/infer", json=request)
    assert answer.status_code == 200, answer.text
    (got,) = answer.json()["outputs"]
    centres = repeated(tiles[:, MARGIN:-MARGIN, MARGIN:-MARGIN].transpose(1, 2, 0, 3), 2)
    assert got["shape"] == [2, 2 * CENTRE, 2 * CENTRE, 3]
    assert np.array_equal(np.reshape(got["data"], got["shape"]), centres.transpose(2, 0, 1, 3))


def test_v2_and_tf_serving_take_encoded_images_of_any_size(client):
    images = [noise_image(37, 29, seed=8), noise_image(37, 29, "L", seed=9)]
    expected = [repeated(np.asarray(image.convert("RGB")), 4) for image in images]
    name = client.get("/v2/models/upscaler-4x").json()["inputs"][0]["name"]
    encoded = [base64.b64encode(png(image)).decode() for image in images]
    request = {"inputs": [{"name": name, "datatype": "BYTES", "shape": [2], "data": encoded,
                           "parameters": {"content_type": "base64"}}]}  # fmt: skip
    answer = client.post("/v2/models/upscaler-4x/infer", json=request)
    assert answer.status_code == 200, answer.text
    (got,) = answer.json()["outputs"]
    assert got["datatype"] == "UINT8" and got["shape"] == [2, 116, 148, 3]
    assert np.array_equal(np.reshape(got["data"], got["shape"]), np.stack(expected))

    instances = {"instances": [{"b64": text} for text in encoded]}
    predicted = client.post("/v1/models/upscaler-4x/versions/1:predict", json=instances)
    assert predicted.status_code == 200, predicted.text
    assert np.array_equal(np.asarray(predicted.json()["predictions"]), np.stack(expected))

    other = base64.b64encode(png(noise_image(20, 29))).decode()
    mixed = {"instances": [{"b64": encoded[0]}, {"b64": other}]}
    refused = client.post("/v1/models/upscaler-4x:predict", json=mixed)
    assert refused.status_code == 400 and "must be of one size" in refused.json()["error"]
