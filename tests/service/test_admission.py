"""Admission control (service/admission.py): a request's deadline runs from its arrival,
its decoding takes one of its model's lanes, and what it will hold is weighed from its
image headers before any work starts. The reproductions of issue 22's findings 1 to 3,
made small enough for the tiny models."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from service import imaging
from service.admission import Cost, PixelBudget
from service.batching import BatchConfig
from service.errors import Overloaded, PayloadTooLarge
from service.metrics import Metrics
from service.runtimes.denoising import DenoiseRequest, DenoisingRuntime
from service.settings import BatchingOverride
from tests.helpers import (
    build_identity_denoiser,
    denoising_manifest,
    encode,
    make_settings,
    metric_total,
    noise_image,
    png,
    serving,
    start_client,
    wait_ready,
    wait_until,
)

PNG = {"Content-Type": "image/png"}


def big_png(side: int) -> bytes:
    """A black PNG of side x side pixels: a hundred KB to send, a third of a second to
    decode at 5000 pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def multipart(*images: bytes) -> dict:
    return {"files": [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]}


def pixels_in_flight(client) -> float:
    text = client.get("/metrics").text
    return metric_total(text, "kerve_pixels_in_flight")


def test_a_request_that_could_never_fit_is_refused_before_decoding(segment_repository):
    """Finding 1: 64 in-limit 6300x6300 PNGs in one request decoded for 29 s. Their 2.5
    billion pixels are more than the server ever holds: 413 at once."""
    bomb = big_png(6300)
    with start_client(make_settings(segment_repository)) as client:
        wait_ready(client)
        started = time.monotonic()
        response = client.post("/v1/classify", **multipart(*[bomb] * 64))
        elapsed = time.monotonic() - started
    assert response.status_code == 413, response.text
    assert "max_pixels_in_flight" in response.json()["error"]["message"]
    assert elapsed < 2.0  # the header alone, not 64 decodes


def test_one_models_large_upload_does_not_hold_another_models_request(segment_repository):
    """Finding 1: a /v1/segment request sent while a large /v1/classify decoded waited
    for it. Each model decodes in its own lane of the pool."""
    images = [big_png(5000)] * 6  # 150 megapixels: seconds to decode
    settings = make_settings(segment_repository, preprocess_threads=1)
    with start_client(settings) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        wait_ready(client)
        large = pool.submit(client.post, "/v1/classify", **multipart(*images))
        wait_until(lambda: pixels_in_flight(client) > 0, interval_s=0.01)  # it is decoding
        started = time.monotonic()
        small = client.post("/v1/segment", content=png(noise_image(64, 48)), headers=PNG)
        waited = time.monotonic() - started
        assert not large.done(), "the large request must still be decoding"
        assert small.status_code == 200, small.text
        assert large.result().status_code == 200
    assert waited < 1.0, f"the segment request waited {waited:.2f} s behind the classify one"


def test_the_deadline_runs_from_arrival_and_bounds_decoding(segment_repository):
    """Finding 1: accepted requests took 17-20 s although timeout_ms was 10 s: the deadline
    started at the batch queue. Here it covers decoding too: a request whose images take
    longer to decode than its deadline gets its 504 at the deadline, not after them."""
    batching = BatchingOverride(max_delay_ms=2, timeout_ms=400)
    with start_client(make_settings(segment_repository, batching=batching)) as client:
        wait_ready(client)
        started = time.monotonic()
        response = client.post("/v1/classify", **multipart(*[big_png(5000)] * 6))
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert elapsed < 1.5, f"answered after {elapsed:.2f} s"
        # The decode stops at its next image; then its pixels are free again.
        wait_until(lambda: pixels_in_flight(client) == 0, timeout_s=10)


def test_requests_over_the_pixel_budget_get_503_at_once_and_memory_stays_bounded(
    segment_repository,
):
    """Finding 2: 32 concurrent overlays of a large PNG took a server from 1.8 to 7.0 GB.
    The pixels held at once are bounded; the requests past the budget are refused at once
    with Retry-After, and every pixel is given back."""
    side = 1500
    image = encode(np.zeros((side, side, 3), np.uint8), "PNG")
    per_request = side * side * 3  # the image, its mask and its overlay
    settings = make_settings(segment_repository, max_pixels_in_flight=2 * per_request)
    with start_client(settings) as client, concurrent.futures.ThreadPoolExecutor(12) as pool:
        wait_ready(client)
        post = lambda _: client.post("/v1/segment?overlay=true", content=image, headers=PNG)  # noqa: E731
        responses = list(pool.map(post, range(12)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 503}, statuses
        refused = [r for r in responses if r.status_code == 503]
        assert all(r.headers["Retry-After"] and "decoded pixels" in r.text for r in refused)
        assert pixels_in_flight(client) == 0
    big = make_settings(segment_repository, max_pixels_in_flight=per_request - 1)
    with start_client(big) as client:
        wait_ready(client)
        response = client.post("/v1/segment?overlay=true", content=image, headers=PNG)
        assert response.status_code == 413  # it alone needs more than the budget
        assert client.post("/v1/segment", content=image, headers=PNG).status_code == 200


def test_an_overlay_holds_no_full_size_copies_beyond_its_answer():
    """Finding 2: the whole-image blend and composite held five more full-size copies;
    the overlay is now blended band by band (numpy's share, traced by tracemalloc)."""
    side = 4000
    image = Image.new("RGB", (side, side), (100, 100, 100))
    classes = np.zeros((side, side), np.uint8)
    classes[:, side // 2 :] = 1
    mask = imaging.mask_image(classes, imaging.class_palette(3))
    tracemalloc.start()
    try:
        blended = imaging.overlay(image, mask)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < side * side * 3 / 2, f"{peak / 1e6:.0f} MB in numpy at once"
    assert blended.getpixel((0, 0)) == (100, 100, 100)
    assert blended.getpixel((side - 1, 0)) == (114, 50, 50)  # halfway to (128, 0, 0)


def denoiser(timeout_ms: float = 10_000, max_queue: int = 512) -> DenoisingRuntime:
    batching = BatchConfig(max_batch_size=8, max_queue=max_queue, timeout_ms=timeout_ms)
    runtime = DenoisingRuntime(
        "denoiser", 1, build_identity_denoiser(), denoising_manifest(), batching=batching,
        metrics=Metrics().for_model("denoiser", 1), max_image_pixels=10**8,
    )  # fmt: skip
    runtime.warm_up()
    runtime.batch_seconds = {8: 8 * 0.01}  # as if a tile cost 10 ms: a known, slow model
    return runtime


def serve(runtime, work):
    """Run ``work(runtime)`` while it serves, counting its model calls."""
    calls = []
    predict = runtime.predict_batch
    runtime.predict_batch = lambda samples: calls.append(len(samples)) or predict(samples)
    return asyncio.run(serving(runtime, work)), calls


def test_a_denoise_that_cannot_finish_in_its_deadline_is_not_begun():
    """Finding 3: a large image took the denoiser 63 s to answer 504. Its tiles, counted
    from its header, are more model time than its deadline: 413 before any work."""
    runtime = denoiser(timeout_ms=1000)
    request = DenoiseRequest(image=png(noise_image(32 * 15, 32 * 15)))  # 225 tiles: 2.25 s
    assert runtime.cost(request).samples > 100

    async def work(runtime):
        with pytest.raises(PayloadTooLarge, match="its deadline is 1 s"):
            await runtime.infer(request)
        return await runtime.infer(DenoiseRequest(image=png(noise_image(40, 40))))

    answer, calls = serve(runtime, work)
    assert answer.width == 40
    assert calls == [4]  # the small one only: its 2 x 2 tiles


def test_work_queued_ahead_past_the_deadline_or_the_queue_is_refused_503_at_once():
    runtime = denoiser(timeout_ms=1000, max_queue=200)
    small = DenoiseRequest(image=png(noise_image(40, 40)))  # 2 x 2 tiles, 40 ms

    async def work(runtime):
        runtime._admitted_samples = 90  # as if 90 tiles were being decoded: 0.9 s of work
        started = time.monotonic()
        with pytest.raises(Overloaded, match="past its deadline") as late:
            await runtime.infer(DenoiseRequest(image=png(noise_image(96, 64))))  # 4 x 3 tiles
        assert late.value.headers["Retry-After"] == "1"
        runtime._admitted_samples = 200  # the least request is refused before its header
        with pytest.raises(Overloaded, match="queue is full"):
            await runtime.infer(small)
        runtime.batch_seconds = {8: 8 * 0.001}  # a fast model: only the queue refuses now
        runtime._batcher.full_batch_seconds = 8 * 0.001
        runtime._admitted_samples = 197  # room for one sample, not for its four tiles
        with pytest.raises(Overloaded, match="queue is full"):
            await runtime.infer(small)
        runtime._admitted_samples = 0
        assert time.monotonic() - started < 0.5  # refused at once, from the headers
        return await runtime.infer(small)

    answer, calls = serve(runtime, work)
    assert answer.width == 40 and calls == [4]


def test_the_pixel_budget_is_held_until_the_last_thread_is_done():
    budget = PixelBudget(100)
    with pytest.raises(PayloadTooLarge):
        budget.take(101)
    first = budget.take(60)
    with pytest.raises(Overloaded, match="60 of its 100"):
        budget.take(41)

    async def run():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(time.sleep, 0.2)
            first.working_on(future)
            first.answered()  # answered (a 504, say) while its thread still decodes
            assert budget.held == 60
            await asyncio.wrap_future(future)
            await asyncio.sleep(0.01)
            assert budget.held == 0

    asyncio.run(run())
    assert Cost(10, 1) + Cost(5, 2) == Cost(15, 3)
