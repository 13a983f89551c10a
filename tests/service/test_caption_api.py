"""POST /v1/caption against tiny real captioners (LSTM and GRU decoders)."""

from __future__ import annotations

import base64
import concurrent.futures
import functools

import keras
import numpy as np
import pytest

from service import imaging
from service.settings import BatchingOverride
from tests.helpers import (
    CAPTION_MAX_LENGTH,
    CAPTION_VOCABULARY,
    build_captioner,
    captioning_manifest,
    encode,
    histogram_sum_count,
    make_settings,
    publish_captioner,
    publish_colour_classifier,
    start_client,
    wait_ready,
    wait_until,
)
from training import export

PNG = {"Content-Type": "image/png"}
SPECIAL_TOKENS = {"<pad>", "<start>", "<end>", "<unk>"}
BANNED = [CAPTION_VOCABULARY.index(token) for token in ("<pad>", "<start>", "<unk>")]
END = CAPTION_VOCABULARY.index("<end>")


def noise_images(count: int, seed: int = 0) -> list[bytes]:
    """Noise images of different sizes and mean colours: different captions."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        height, width = 10 + 7 * index % 23, 12 + 5 * index % 31
        tint = rng.integers(0, 256, 3)
        pixels = np.clip(tint + rng.normal(0, 30, (height, width, 3)), 0, 255)
        images.append(encode(pixels.astype(np.uint8), "PNG"))
    return images


@pytest.fixture(scope="module")
def caption_repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions") / "models"
    publish_captioner(root, name="captioner", cell="lstm")
    publish_captioner(root, name="captioner-gru", cell="gru")
    publish_colour_classifier(root)
    return root


@pytest.fixture(scope="module")
def caption_client(caption_repository):
    with start_client(make_settings(caption_repository)) as client:
        wait_ready(client)
        yield client


def caption(client, body: bytes, url: str = "/v1/caption", **params) -> dict:
    response = client.post(url, content=body, headers=PNG, params=params)
    assert response.status_code == 200, response.text
    [found] = response.json()["captions"]
    return found


@functools.cache
def sub_models(cell: str):
    """The encoder and decoder of the served captioner, rebuilt from the same seed."""
    model = build_captioner(cell)
    return model.get_layer("encoder"), model.get_layer("decoder")


def reference_greedy(image: bytes, max_length: int, cell: str = "lstm"):
    """Greedy decoding written out step by step with the Keras sub-models."""
    encoder, decoder = sub_models(cell)
    sample = imaging.load_sample(image, captioning_manifest().input, 10**8)[np.newaxis]
    context, *states = encoder.predict_on_batch(sample)
    words, total, token = [], 0.0, CAPTION_VOCABULARY.index("<start>")
    for position in range(max_length + 1):
        log_probs, *states = decoder.predict_on_batch([np.array([[token]]), context, *states])
        allowed = log_probs[0].astype(np.float64)
        allowed[BANNED] = -np.inf
        choice = int(allowed.argmax())
        token = END if position == max_length else choice
        total += allowed[token]
        if token == END:
            return " ".join(words), total, choice == END
        words.append(CAPTION_VOCABULARY[token])
    raise AssertionError("unreachable")


def test_response_schema_and_input_forms(caption_client):
    images = noise_images(3)
    response = caption_client.post("/v1/caption", content=images[0], headers=PNG)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("captioner", 1)
    [found] = body["captions"]
    assert set(found) == {"caption", "log_prob", "ended", "alternatives"}
    assert isinstance(found["caption"], str) and isinstance(found["ended"], bool)
    assert found["log_prob"] < 0 and found["alternatives"] is None
    # Several images per request, multipart or JSON: one caption each, in order.
    alone = [caption(caption_client, image)["caption"] for image in images]
    files = [("file", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
    multipart = caption_client.post("/v1/caption", files=files).json()["captions"]
    entries = [{"b64": base64.b64encode(image).decode()} for image in images]
    as_json = caption_client.post("/v1/caption", json={"images": entries}).json()["captions"]
    assert [c["caption"] for c in multipart] == [c["caption"] for c in as_json] == alone
    assert len(set(alone)) > 1  # the captions depend on the image
    info = caption_client.get("/v1/models/captioner").json()["versions"][0]
    assert info["task"] == "captioning" and info["state"] == "AVAILABLE"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_beam_size_one_is_greedy_decoding(caption_client, cell):
    name = {"lstm": "captioner", "gru": "captioner-gru"}[cell]
    endings = set()
    for image in noise_images(6, seed=1):
        for max_length in (3, CAPTION_MAX_LENGTH):
            url = f"/v1/models/{name}/versions/1/caption"
            found = caption(caption_client, image, url, beam_size=1, max_length=max_length)
            text, log_prob, ended = reference_greedy(image, max_length, cell)
            assert (found["caption"], found["ended"]) == (text, ended)
            assert found["log_prob"] == pytest.approx(log_prob, abs=1e-4)
            endings.add(ended)
    assert endings == {True, False}  # captions that ended and captions cut short


def test_alternatives_are_distinct_and_ordered_by_log_prob(caption_client):
    for image in noise_images(4, seed=2):
        found = caption(caption_client, image, beam_size=5)
        beams = [found, *found["alternatives"]]
        assert len(beams) == 5
        log_probs = [beam["log_prob"] for beam in beams]
        assert log_probs == sorted(log_probs, reverse=True)
        assert len({beam["caption"] for beam in beams}) == 5


def test_max_length_is_respected(caption_client):
    for image in noise_images(4, seed=3):
        for max_length in (1, 2, 5):
            found = caption(caption_client, image, beam_size=3, max_length=max_length)
            for beam in (found, *found["alternatives"]):
                assert len(beam["caption"].split()) <= max_length
        default = caption(caption_client, image, beam_size=2)
        assert len(default["caption"].split()) <= CAPTION_MAX_LENGTH


def test_the_unknown_token_never_appears(caption_client):
    images = noise_images(8, seed=4)
    # Unbanned, <unk> would be the model's first word for these images.
    model = build_captioner()
    samples = np.stack([imaging.load_sample(i, captioning_manifest().input, 10**8) for i in images])
    encoded = model.get_layer("encoder").predict_on_batch(samples)
    start = np.full((len(images), 1), CAPTION_VOCABULARY.index("<start>"))
    first = model.get_layer("decoder").predict_on_batch([start, *encoded])[0]
    assert (first.argmax(axis=1) == CAPTION_VOCABULARY.index("<unk>")).all()
    for name in ("captioner", "captioner-gru"):
        for beam_size in (1, 4, 8):
            files = [("file", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
            response = caption_client.post(
                f"/v1/models/{name}/caption", files=files, params={"beam_size": beam_size}
            )
            assert response.status_code == 200, response.text
            for found in response.json()["captions"]:
                for beam in (found, *(found["alternatives"] or [])):
                    assert not set(beam["caption"].split()) & SPECIAL_TOKENS


def test_batched_requests_give_the_same_captions_as_one_by_one(caption_repository):
    images = noise_images(12, seed=5)
    requests = [(image, 1 + index % 4, 3 + index % 6) for index, image in enumerate(images)]

    def captions(settings, concurrency):
        with start_client(settings) as client:
            wait_ready(client)

            def ask(request):
                image, beam_size, max_length = request
                return caption(client, image, beam_size=beam_size, max_length=max_length)

            with concurrent.futures.ThreadPoolExecutor(concurrency) as threads:
                found = list(threads.map(ask, requests))
            return found, client.get("/metrics").text

    one_by_one, _ = captions(
        make_settings(caption_repository, batching=BatchingOverride(max_batch_size=1)), 1
    )
    batched, metrics = captions(
        make_settings(caption_repository, batching=BatchingOverride(max_delay_ms=200)),
        len(requests),
    )
    total, calls = histogram_sum_count(metrics, "kerve_batch_size", "captioner")
    assert total == len(requests) and calls < len(requests)  # requests shared decode loops
    for alone, together in zip(one_by_one, batched, strict=True):
        assert together["caption"] == alone["caption"]
        assert together["log_prob"] == pytest.approx(alone["log_prob"], abs=1e-4)
        assert [a["caption"] for a in together["alternatives"] or []] == [
            a["caption"] for a in alone["alternatives"] or []
        ]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="counts tf.function traces")
def test_warm_up_leaves_no_trace_for_requests(caption_client):
    runtime = caption_client.app.state.repository.get("captioner")
    functions = [runtime.encoder.predict_function, runtime.decoder.predict_function]
    traced = [function.experimental_get_tracing_count() for function in functions]
    images = noise_images(10, seed=6)
    with concurrent.futures.ThreadPoolExecutor(10) as threads:
        beams = threads.map(
            lambda i: caption(caption_client, images[i], beam_size=1 + i % 8), range(10)
        )
        assert len(list(beams)) == 10
    assert [function.experimental_get_tracing_count() for function in functions] == traced


@pytest.mark.parametrize(
    ("description", "url", "kwargs", "status", "code"),
    [
        ("not an image", "/v1/caption", {"content": b"garbage", "headers": PNG}, 400,
         "invalid_image"),
        ("beam size 0", "/v1/caption?beam_size=0", {}, 422, "invalid_request"),
        ("beam size 9", "/v1/caption?beam_size=9", {}, 422, "invalid_request"),
        ("beam size not a number", "/v1/caption?beam_size=x", {}, 422, "invalid_request"),
        ("max length 0", "/v1/caption?max_length=0", {}, 422, "invalid_request"),
        ("max length too long", f"/v1/caption?max_length={CAPTION_MAX_LENGTH + 1}", {}, 400,
         "bad_request"),
        ("unsupported content type", "/v1/caption",
         {"content": b"a=b", "headers": {"Content-Type": "text/plain"}}, 415,
         "unsupported_media_type"),
        ("empty body", "/v1/caption", {"content": b"", "headers": PNG}, 400, "bad_request"),
        ("wrong task", "/v1/models/colours/caption", {}, 400, "wrong_task"),
        ("unknown model", "/v1/models/nope/caption", {}, 404, "model_not_found"),
        ("unknown version", "/v1/models/captioner/versions/3/caption", {}, 404,
         "version_not_found"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_clear_4xx(caption_client, description, url, kwargs, status, code):
    kwargs = kwargs or {"content": noise_images(1)[0], "headers": PNG}
    response = caption_client.post(url, **kwargs)
    assert response.status_code == status, (description, response.text)
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    if "beam" in description or "length" in description:
        assert ("beam_size" if "beam" in description else "max_length") in error["message"]


def test_a_malformed_captioner_fails_to_load_and_the_rest_serve(tmp_path):
    root = tmp_path / "models"
    publish_captioner(root, name="captioner")
    export.publish(build_captioner(vocabulary_size=15), captioning_manifest(), root, "wrong-vocab")
    decoder_only = build_captioner().get_layer("decoder")
    export.publish(decoder_only, captioning_manifest(), root, "no-encoder")
    with start_client(make_settings(root)) as client:
        wait_until(lambda: client.get("/readyz").json()["initial_load_done"])
        failed = client.get("/readyz").json()["failed"]
        assert set(failed) == {"wrong-vocab", "no-encoder"}
        assert "need shapes [(12,), (6,), (6,)], not [(15,)" in failed["wrong-vocab"]["1"]
        assert "'encoder' and 'decoder'" in failed["no-encoder"]["1"]
        assert caption(client, noise_images(1)[0])["caption"]
        response = client.post("/v1/models/wrong-vocab/caption", content=noise_images(1)[0],
                               headers=PNG)  # fmt: skip
        assert response.status_code == 503
