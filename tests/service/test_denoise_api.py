"""POST /v1/denoise against tiny real denoisers: identity, sigma-adding and convolutional."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import tracemalloc

import numpy as np
import pytest
import skimage.data
from PIL import Image

from service import imaging
from service.batching import BatchConfig
from service.errors import PayloadTooLarge
from service.metrics import Metrics
from service.runtimes.denoising import DenoiseRequest, DenoisingRuntime
from service.settings import BatchingOverride
from tests.helpers import (
    batch_counts,
    build_conv_denoiser,
    build_cropping_denoiser,
    build_identity_denoiser,
    build_sigma_denoiser,
    denoising_manifest,
    encode,
    make_settings,
    noise_image,
    png,
    post_for_image,
    publish_colour_classifier,
    publish_denoiser,
    serving,
    start_client,
    until_requests_share_a_call,
    wait_ready,
    wait_until,
    with_declared_size,
)

PNG = {"Content-Type": "image/png"}
TILE, MARGIN = 32, 4  # the test models' tiles: 24-pixel centres
CENTRE = TILE - 2 * MARGIN
BIG_TILE, BIG_MARGIN = 128, 16
QUEUE = 4096  # samples: room for the tiles of the largest test image
PHOTO_SIZE = (4000, 3000)
# Peak numpy and Python allocations serving one image, over its decoded bytes
# (the DenoisingRuntime docstring); 5.5x measured for the noisy photo below.
MEMORY_BOUND = 6.5


@pytest.fixture(scope="module")
def denoise_repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("denoise") / "models"
    publish_denoiser(root, "denoiser", max_queue=QUEUE)
    publish_denoiser(root, "gray-denoiser", channels=1, max_queue=QUEUE)
    publish_denoiser(root, "sigma-denoiser", model=build_sigma_denoiser(), sigma_input=True,
                     sigma_range=(2.0, 50.0), max_queue=QUEUE)  # fmt: skip
    publish_denoiser(root, "tiny-dncnn", model=build_conv_denoiser(layers=3), max_queue=QUEUE)
    publish_denoiser(root, "tiny-dncnn-thin", model=build_conv_denoiser(layers=3), margin=1)
    publish_denoiser(root, "photo-denoiser", tile=BIG_TILE, margin=BIG_MARGIN, max_queue=QUEUE)
    publish_colour_classifier(root)
    return root


@pytest.fixture(scope="module")
def denoise_client(denoise_repository):
    with start_client(make_settings(denoise_repository)) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def batching_client(denoise_repository):
    """Batches wait up to 1 s for more samples, so concurrent requests share them even when
    a loaded machine schedules the client threads late (200 ms lost that race in CI)."""
    settings = make_settings(denoise_repository, batching=BatchingOverride(max_delay_ms=1000))
    with start_client(settings) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def noisy_photo() -> bytes:
    """A 4000x3000 JPEG of a real photo with Gaussian noise (sigma 15): what a denoiser gets."""
    photo = Image.fromarray(skimage.data.astronaut()).resize(PHOTO_SIZE, Image.Resampling.BILINEAR)
    noise = np.random.default_rng(0).normal(0, 15, (*PHOTO_SIZE[::-1], 3)).astype(np.float32)
    return encode(np.clip(np.asarray(photo) + noise, 0, 255).astype(np.uint8), "JPEG", quality=85)


def denoise(client, body: bytes, url: str = "/v1/denoise", **params) -> tuple[dict, Image.Image]:
    return post_for_image(client, body, url, **params)


def tiles_for(width: int, height: int, centre: int = CENTRE) -> int:
    return -(-width // centre) * -(-height // centre)


@pytest.mark.parametrize("name", ["denoiser", "gray-denoiser"])
@pytest.mark.parametrize(
    "size", [(1, 1), (7, 300), (300, 7), (1000, 3), (3, 1000), (129, 257), (500, 333)]
)
def test_identity_model_returns_the_input_pixel_for_pixel(denoise_client, name, size):
    for mode in ("RGB", "L"):
        image = noise_image(*size, mode)
        found, output = denoise(denoise_client, png(image), f"/v1/models/{name}/denoise")
        assert (found["model"], found["width"], found["height"]) == (name, *size)
        assert found["mode"] == output.mode == mode and output.size == size
        assert np.array_equal(np.asarray(output), np.asarray(image))
        # A gray model cuts a colour image into three planes; a colour model takes gray whole.
        planes = 3 if (name, mode) == ("gray-denoiser", "RGB") else 1
        assert found["tiles"] == planes * tiles_for(*size) and found["sigma"] is None


def test_other_modes_come_back_as_rgb_or_l(denoise_client):
    rgba = np.asarray(noise_image(45, 30, seed=1).convert("RGBA")).copy()
    rgba[:10, :, 3] = 0  # transparent: white after compositing
    rgba[10:20, :, 3] = 128
    gray16 = np.random.default_rng(2).integers(0, 65536, (30, 45), dtype=np.uint16)
    la = np.stack([np.asarray(noise_image(45, 30, "L", seed=3)), rgba[:, :, 3]], axis=-1)
    images = {
        "RGBA": (Image.fromarray(rgba, "RGBA"), "RGB"),
        "P": (noise_image(45, 30, seed=4).quantize(16), "RGB"),
        "I;16": (Image.fromarray(gray16), "L"),
        "LA": (Image.fromarray(la, "LA"), "L"),
    }
    for name in ("denoiser", "gray-denoiser"):
        for source_mode, (image, mode) in images.items():
            body = png(image)
            source = Image.open(io.BytesIO(body))
            assert source.mode == source_mode
            found, output = denoise(denoise_client, body, f"/v1/models/{name}/denoise")
            assert found["mode"] == output.mode == mode and output.size == (45, 30)
            expected = imaging.to_mode(source, 3 if mode == "RGB" else 1)
            assert np.array_equal(np.asarray(output), np.asarray(expected)), (name, source_mode)
    found, output = denoise(denoise_client, png(images["RGBA"][0]))
    assert (np.asarray(output)[:10] == 255).all()  # transparent pixels became white
    levels = np.asarray(denoise(denoise_client, png(images["I;16"][0]))[1])
    assert np.array_equal(levels, np.rint(gray16 / 257.0).astype(np.uint8))  # scaled, not clipped


def test_input_forms_routes_and_raw_png(denoise_client):
    image = noise_image(50, 40, seed=5)
    body = png(image)
    as_raw, _ = denoise(denoise_client, body)
    assert as_raw["model"] == "denoiser" and as_raw["version"] == 1
    files = [("file", ("a.png", body, "image/png"))]
    as_form = denoise_client.post("/v1/models/denoiser/versions/1/denoise", files=files).json()
    as_json = denoise_client.post(
        "/v1/denoise?model=denoiser&version=1",
        json={"image": {"b64": base64.b64encode(body).decode()}},
    ).json()
    assert as_raw["image"] == as_form["image"] == as_json["image"]
    raw = denoise_client.post(
        "/v1/models/denoiser/denoise", content=body, headers={**PNG, "Accept": "image/png"}
    )
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(raw.content))), np.asarray(image))
    json_first = denoise_client.post(
        "/v1/denoise", content=body, headers={**PNG, "Accept": "application/json, image/png"}
    )
    assert json_first.json()["image"] == as_raw["image"]


def test_stitched_tiles_equal_the_whole_image_at_once(denoise_client):
    """The margin (4) covers the receptive radius of three 3x3 convolutions (3): no seams."""
    height, width = 110, 150  # 5 x 7 tiles
    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([xx * 1.5, yy * 2.0, 128 + 60 * np.sin(xx / 9) * np.cos(yy / 7)], axis=-1)
    pixels = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    found, output = denoise(denoise_client, encode(pixels, "PNG"), "/v1/models/tiny-dncnn/denoise")
    assert found["tiles"] == 35
    whole = build_conv_denoiser(layers=3).predict_on_batch(pixels[np.newaxis] / 255.0)[0]
    reference = np.clip(np.rint(whole * 255), 0, 255).astype(int)
    served = np.asarray(output).astype(int)
    inner = (slice(3, -3), slice(3, -3))  # the whole-image run pads its border with zeros
    assert np.abs(served[inner] - reference[inner]).max() <= 1
    assert np.abs(served - pixels).mean() > 10  # the model does change the image
    assert 0.01 < (served == 0).mean() + (served == 255).mean() < 0.2  # and is not saturated
    # A margin of 1 (centres of 30) misses context: errors appear 2 px either side of seams.
    thin = denoise(denoise_client, encode(pixels, "PNG"), "/v1/models/tiny-dncnn-thin/denoise")[1]
    error = np.abs(np.asarray(thin).astype(int) - reference).max(axis=-1)[inner]
    near_seam = ((yy + 2) % 30 < 4) | ((xx + 2) % 30 < 4)
    assert error.max() > 10 and (error[~near_seam[inner]] <= 1).all()


def test_tiles_of_concurrent_requests_share_batches(batching_client):
    sizes = [(40, 40), (30, 70), (90, 20), (24, 24), (60, 50), (5, 100)]
    images = [noise_image(w, h, seed=10 + i) for i, (w, h) in enumerate(sizes)]

    def ask(image):
        return denoise(batching_client, png(image), "/v1/models/denoiser/denoise")

    def send_together():
        with concurrent.futures.ThreadPoolExecutor(len(images)) as threads:
            results = list(threads.map(ask, images))
        for image, (_, output) in zip(images, results, strict=True):
            assert np.array_equal(np.asarray(output), np.asarray(image))

    # One by one, each request would be at least one model call of its own.
    until_requests_share_a_call(
        send_together,
        lambda: batch_counts(batching_client, "denoiser"),
        samples=sum(tiles_for(w, h) for w, h in sizes),
        alone=len(sizes),
    )


def test_given_sigma_reaches_the_model(denoise_client):
    """The sigma model returns image + sigma / 255, that is, sigma levels brighter."""
    image = Image.fromarray(np.full((30, 70, 3), 100, np.uint8))
    for sigma in (0.0, 10.0, 37.3, 255.0):
        found, output = denoise(
            denoise_client, png(image), "/v1/models/sigma-denoiser/denoise", sigma=sigma
        )
        assert found["sigma"] == sigma
        expected = min(255, int(np.rint(100 + sigma)))
        assert (np.asarray(output) == expected).all(), sigma


def test_requests_with_different_sigmas_share_a_batch(batching_client):
    sigmas = [0.0, 5.0, 12.0, 20.0, 33.0, 50.0]
    images = [noise_image(50, 50 + 10 * i, "L", seed=20 + i) for i in range(len(sigmas))]

    def ask(request):
        image, sigma = request
        url = "/v1/models/sigma-denoiser/denoise"
        return denoise(batching_client, png(image), url, sigma=sigma)

    def send_together():
        with concurrent.futures.ThreadPoolExecutor(len(sigmas)) as threads:
            results = list(threads.map(ask, zip(images, sigmas, strict=True)))
        for image, sigma, (found, output) in zip(images, sigmas, results, strict=True):
            assert found["sigma"] == sigma and output.mode == "L"
            expected = np.clip(np.asarray(image).astype(int) + int(sigma), 0, 255)
            assert np.array_equal(np.asarray(output), expected), sigma

    until_requests_share_a_call(
        send_together,
        lambda: batch_counts(batching_client, "sigma-denoiser"),
        samples=sum(tiles_for(50, 50 + 10 * i) for i in range(len(sigmas))),
        alone=len(sigmas),
    )


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_sigma_is_estimated_when_not_given(denoise_client, mode):
    shape = (256, 256) if mode == "L" else (256, 256, 3)
    noise = np.random.default_rng(30).normal(0, 20, shape)
    noisy = np.clip(128 + noise, 0, 255).astype(np.uint8)
    url = "/v1/models/sigma-denoiser/denoise"
    found, output = denoise(denoise_client, encode(noisy, "PNG"), url)
    assert found["sigma"] == pytest.approx(20, abs=1.5)
    # The model got the estimate: it added it to every pixel.
    shift = np.asarray(output).astype(int) - noisy
    assert np.abs(shift[noisy < 200] - found["sigma"]).max() <= 1
    # A clean image estimates 0, raised to the model's sigma_range (2, 50).
    clean = encode(np.full((40, 40), 90, np.uint8), "PNG")
    assert denoise(denoise_client, clean, url)[0]["sigma"] == 2.0


def test_a_4000x3000_photo_is_served(denoise_client, noisy_photo):
    assert len(noisy_photo) < 16 * 1024 * 1024
    response = denoise_client.post(
        "/v1/models/photo-denoiser/denoise",
        content=noisy_photo,
        headers={"Content-Type": "image/jpeg", "Accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    output = Image.open(io.BytesIO(response.content))
    assert output.size == PHOTO_SIZE and output.mode == "RGB"
    decoded = Image.open(io.BytesIO(noisy_photo))
    assert np.array_equal(np.asarray(output), np.asarray(decoded))


def test_memory_stays_within_the_bound_for_a_4000x3000_photo(noisy_photo):
    """Preprocess, batched predict and postprocess (JSON) of one photo, traced by tracemalloc."""
    manifest = denoising_manifest(tile=BIG_TILE, margin=BIG_MARGIN)
    runtime = DenoisingRuntime(
        "photo-denoiser", 1, build_identity_denoiser(), manifest,
        batching=BatchConfig(max_batch_size=32, max_queue=QUEUE),
        metrics=Metrics().for_model("photo-denoiser", 1), max_image_pixels=40_000_000,
    )  # fmt: skip
    runtime.warm_up()

    async def work(runtime):
        return await runtime.infer(DenoiseRequest(image=noisy_photo))

    tracemalloc.start()
    try:
        found = asyncio.run(serving(runtime, work, threads=1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    decoded_bytes = PHOTO_SIZE[0] * PHOTO_SIZE[1] * 3
    assert found.tiles == tiles_for(*PHOTO_SIZE, centre=BIG_TILE - 2 * BIG_MARGIN) == 1344
    assert peak <= MEMORY_BOUND * decoded_bytes, f"peak {peak / decoded_bytes:.2f}x the image"
    output = Image.open(io.BytesIO(base64.b64decode(found.image.b64)))
    assert np.array_equal(np.asarray(output), np.asarray(Image.open(io.BytesIO(noisy_photo))))


def test_an_image_of_more_tiles_than_the_queue_holds_is_413():
    runtime = DenoisingRuntime(
        "small-queue", 1, build_identity_denoiser(), denoising_manifest(),
        batching=BatchConfig(max_queue=10), metrics=Metrics().for_model("small-queue", 1),
        max_image_pixels=10**6,
    )  # fmt: skip
    # Admission weighs the request by its header, before anything is decoded.
    assert runtime.cost(DenoiseRequest(image=png(noise_image(48, 120)))).samples == 10  # 2 x 5
    with pytest.raises(PayloadTooLarge, match="is 12 tiles for model 'small-queue'"):
        runtime.cost(DenoiseRequest(image=png(noise_image(48, 144))))


# 12 KB of a 256x192 photo whose header claims 6000x6000: libjpeg would pad it with grey.
TRUNCATED = with_declared_size(encode(np.asarray(noise_image(256, 192)), "JPEG"), 6000, 6000)
TWO_FILES = {
    "files": [("file", ("a.png", b"x", "image/png")), ("file", ("b.png", b"y", "image/png"))]
}


@pytest.mark.parametrize(
    ("description", "url", "kwargs", "status", "code", "message"),
    [
        ("not an image", "/v1/denoise", {"content": b"garbage", "headers": PNG}, 400,
         "invalid_image", "not a decodable image"),
        ("empty body", "/v1/denoise", {"content": b"", "headers": PNG}, 400, "bad_request",
         "no image"),
        ("a JPEG claiming more pixels than it holds", "/v1/denoise", {"content": TRUNCATED,
         "headers": {"Content-Type": "image/jpeg"}}, 400, "invalid_image", "truncated"),
        ("two images", "/v1/denoise", TWO_FILES, 400, "bad_request", "one image per request"),
        ("negative sigma", "/v1/models/sigma-denoiser/denoise?sigma=-1", {}, 422,
         "invalid_request", "sigma: Input should be greater than or equal to 0"),
        ("sigma too large", "/v1/models/sigma-denoiser/denoise?sigma=300", {}, 422,
         "invalid_request", "sigma: Input should be less than or equal to 255"),
        ("sigma not a number", "/v1/models/sigma-denoiser/denoise?sigma=abc", {}, 422,
         "invalid_request", "sigma"),
        ("sigma to a blind model", "/v1/denoise?sigma=10", {}, 400, "bad_request",
         "estimates the noise level itself"),
        ("text body", "/v1/denoise", {"content": b"a=b", "headers": {"Content-Type": "text/plain"}},
         415, "unsupported_media_type", "text/plain"),
        ("a classifier", "/v1/models/colours/denoise", {}, 400, "wrong_task",
         "serves classification, not denoising"),
        ("unknown model", "/v1/denoise?model=nope", {}, 404, "model_not_found", "nope"),
        ("unknown version", "/v1/models/denoiser/versions/9/denoise", {}, 404,
         "version_not_found", "no version 9"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_clear_4xx(
    denoise_client, description, url, kwargs, status, code, message
):
    kwargs = kwargs or {"content": png(noise_image(20, 20)), "headers": PNG}
    response = denoise_client.post(url, **kwargs)
    assert response.status_code == status, (description, response.text)
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"], (description, error)


def test_no_denoiser_loaded_is_404(client):
    response = client.post("/v1/denoise", content=png(noise_image(20, 20)), headers=PNG)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no denoising model is loaded"


def test_broken_denoisers_fail_to_load_and_the_rest_serve(tmp_path):
    root = tmp_path / "models"
    publish_denoiser(root, "denoiser")
    publish_denoiser(root, "cropping", model=build_cropping_denoiser())
    publish_denoiser(root, "no-noise-input", sigma_input=True)  # a one-input model
    with start_client(make_settings(root, max_image_pixels=1000)) as client:
        wait_until(lambda: client.get("/readyz").json()["initial_load_done"])
        failed = client.get("/readyz").json()["failed"]
        assert set(failed) == {"cropping", "no-noise-input"}
        assert "tiles of shape (32, 32, 3) into (30, 30, 3)" in failed["cropping"]["1"]
        assert "['image', 'noise_map'], but it has 1" in failed["no-noise-input"]["1"]
        small = png(noise_image(40, 25))
        assert denoise(client, small)[0]["model"] == "denoiser"
        broken = client.post("/v1/models/cropping/denoise", content=small, headers=PNG)
        assert broken.status_code == 503
        too_many = client.post("/v1/denoise", content=png(noise_image(40, 26)), headers=PNG)
        assert too_many.status_code == 413
        assert too_many.json()["error"]["code"] == "payload_too_large"


def test_openapi_lists_the_denoise_routes(denoise_client):
    paths = denoise_client.get("/openapi.json").json()["paths"]
    routes = {
        "/v1/denoise": "Denoise an image of any size",
        "/v1/models/{name}/denoise": "newest version of one model",
        "/v1/models/{name}/versions/{version}/denoise": "one exact model version",
    }
    for path, description in routes.items():
        operation = paths[path]["post"]
        assert description in operation["description"]
        assert "sigma" in {parameter["name"] for parameter in operation["parameters"]}
        assert "image/png" in operation["responses"]["200"]["content"]
    assert denoise_client.get("/docs").status_code == 200
