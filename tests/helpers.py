"""Helpers for the suite: tiny real Keras models, repositories, running apps, images."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import os
import re
import struct
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

import kerve_manifest  # noqa: E402
from bench.server import free_port  # noqa: E402
from service.admission import Admission, PixelBudget  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import BatchingOverride, Settings  # noqa: E402
from training import export  # noqa: E402

COLOUR_LABELS = ["red", "green", "blue"]
IMAGE_SIZE = 16


def build_colour_classifier(sharpness: float = 10.0, activation: str = "softmax") -> keras.Model:
    """A tiny real classifier whose answer is the image's dominant colour channel.

    Mean-pooled RGB in [0, 1] times ``sharpness`` are the logits; softmax follows.
    Different ``sharpness`` values make distinguishable model versions.
    """
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(3, activation=activation, name="colour")
    outputs = dense(pooled)
    dense.set_weights([np.eye(3, dtype=np.float32) * sharpness, np.zeros(3, np.float32)])
    return keras.Model(inputs, outputs)


def colour_manifest(**batching) -> kerve_manifest.Manifest:
    return kerve_manifest.ClassificationManifest(
        input=kerve_manifest.InputSpec.scaled(IMAGE_SIZE, IMAGE_SIZE, 3, "unit"),
        labels=COLOUR_LABELS,
        batching=kerve_manifest.BatchingSpec(**batching),
        description="test model: dominant colour",
    )


def publish_colour_classifier(
    repository: Path, name: str = "colours", sharpness: float = 10.0, **batching
) -> Path:
    return export.publish(
        build_colour_classifier(sharpness), colour_manifest(**batching), repository, name
    )


SEGMENT_LABELS = ["background", "red", "blue"]


def build_colour_segmenter() -> keras.Model:
    """A tiny real segmenter: a pixel is "red" or "blue" where that channel exceeds the
    other two together, else background. A 1x1 convolution then softmax."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    conv = keras.layers.Conv2D(3, 1, activation="softmax", name="pixel_classes")
    outputs = conv(inputs)
    kernel = np.array([[0, 10, -10], [0, -10, -10], [0, -10, 10]], np.float32)  # [in, out]
    conv.set_weights([kernel.reshape(1, 1, 3, 3), np.zeros(3, np.float32)])
    return keras.Model(inputs, outputs)


def publish_colour_segmenter(repository: Path, name: str = "regions", **batching) -> Path:
    manifest = kerve_manifest.SegmentationManifest(
        input=kerve_manifest.InputSpec.scaled(IMAGE_SIZE, IMAGE_SIZE, 3, "unit"),
        labels=SEGMENT_LABELS,
        batching=kerve_manifest.BatchingSpec(**batching),
        description="test model: red and blue regions",
    )
    return export.publish(build_colour_segmenter(), manifest, repository, name)


def histogram_sum_count(metrics_text: str, name: str, model: str) -> tuple[float, float]:
    """(sum, count) of one model's version-1 histogram in a /metrics page."""

    def value(suffix: str) -> float:
        pattern = rf'^{name}_{suffix}{{model="{model}",version="1"}} (\S+)$'
        return float(re.search(pattern, metrics_text, re.MULTILINE).group(1))

    return value("sum"), value("count")


def batch_counts(client, model: str) -> tuple[float, float]:
    """(samples, model calls) a model's batches have had, from the server's /metrics."""
    return histogram_sum_count(client.get("/metrics").text, "kerve_batch_size", model)


def until_requests_share_a_call(
    send_together, batch_counts, samples: int, alone: int, tries: int = 10
) -> None:
    """Send concurrent requests until they have shared a model call.

    A batch runs at once when no other request is on its way, so concurrent requests
    share one only if they overlap, which a loaded machine can prevent by starting the
    client threads late. ``send_together`` sends them and checks every answer (each try
    must give the same results); ``batch_counts`` reads a model's (samples, calls);
    one by one the requests would take ``alone`` calls for ``samples``."""
    for _ in range(tries):
        samples_before, calls_before = batch_counts()
        send_together()
        samples_after, calls_after = batch_counts()
        assert samples_after - samples_before == samples
        if calls_after - calls_before < alone:
            return
    raise AssertionError(f"the requests never shared a model call in {tries} tries")


def make_settings(models_dir: Path, **overrides) -> Settings:
    values = {
        "models_dir": models_dir,
        "poll_interval_s": 0.2,
        "batching": BatchingOverride(max_delay_ms=2),
        # Keras alone: exporting each tiny model to ONNX would cost seconds per test;
        # tests/service/test_engines.py covers the compiled engines.
        "engine": "keras",
        **overrides,
    }
    return Settings(**values)


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of metric ``name``'s samples in a /metrics ``text`` whose labels include
    ``labels`` (a metric without labels: its value)."""
    found = 0.0
    for line_labels, value in re.findall(rf"^{name}(?:\{{(.*?)\}})? (\S+)$", text, re.MULTILINE):
        if all(f'{key}="{wanted}"' in line_labels for key, wanted in labels.items()):
            found += float(value)
    return found


def wait_until(predicate, timeout_s: float = 60.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("condition not met in time")


def start_client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


def wait_ready(client: TestClient) -> None:
    wait_until(lambda: client.get("/readyz").status_code == 200)


def encode(array: np.ndarray, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def with_declared_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header claiming another size: the scan ends early."""
    at = jpeg.index(b"\xff\xc0") if b"\xff\xc0" in jpeg else jpeg.index(b"\xff\xc2")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> np.ndarray:
    width, height = size
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()


CAPTION_VOCABULARY = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "green", "blue",
                      "square", "on", "dark", "bright"]  # fmt: skip
CAPTION_IMAGE_SIZE = 12
CAPTION_MAX_LENGTH = 8


def build_captioner(cell: str = "lstm", seed: int = 12, vocabulary_size: int | None = None):
    """A tiny real captioner following the service's encoder/decoder contract.

    encoder: image -> [context vector, *initial states]; decoder (one step): [token,
    context, *states] -> [log_probs, *new states], an LSTM or GRU over one time step.
    Weights come from ``seed``; ``<unk>`` gets a large bias, so it would be the most
    likely token if the service did not ban it. ``vocabulary_size`` other than the
    manifest's breaks the contract.
    """
    vocabulary_size = vocabulary_size or len(CAPTION_VOCABULARY)
    units, context_size = 6, 5
    image = keras.Input((CAPTION_IMAGE_SIZE, CAPTION_IMAGE_SIZE, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(image)
    context = keras.layers.Dense(context_size, activation="tanh")(pooled)
    num_states = 2 if cell == "lstm" else 1
    initial = [keras.layers.Dense(units, activation="tanh")(pooled) for _ in range(num_states)]
    encoder = keras.Model(image, [context, *initial], name="encoder")

    token = keras.Input((1,), dtype="int32", name="token")
    context_in = keras.Input((context_size,), name="context")
    states_in = [keras.Input((units,), name=f"state_{i}") for i in range(num_states)]
    embedded = keras.layers.Embedding(vocabulary_size, 4)(token)
    features = keras.layers.Concatenate()(
        [embedded, keras.layers.Reshape((1, context_size))(context_in)]
    )
    recurrent = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cell]
    output, *states_out = recurrent(units, return_state=True)(features, initial_state=states_in)
    head = keras.layers.Dense(vocabulary_size, activation="log_softmax", name="next_token")
    decoder = keras.Model(
        [token, context_in, *states_in], [head(output), *states_out], name="decoder"
    )

    rng = np.random.default_rng(seed)
    for layer in (*encoder.layers, *decoder.layers):
        layer.set_weights([rng.normal(0, 1.0, w.shape).astype(np.float32)
                           for w in layer.get_weights()])  # fmt: skip
    kernel, bias = head.get_weights()
    bias[CAPTION_VOCABULARY.index("<unk>")] = 8.0
    bias[CAPTION_VOCABULARY.index("<end>")] += 1.5
    head.set_weights([kernel * 2, bias])

    # The outer model only saves both in one file: image + first token -> first log-probs.
    first_token = keras.Input((1,), dtype="int32", name="first_token")
    outputs = decoder([first_token, *encoder(image)])
    return keras.Model([image, first_token], outputs)


def captioning_manifest(**batching) -> kerve_manifest.Manifest:
    return kerve_manifest.CaptioningManifest(
        input=kerve_manifest.InputSpec.scaled(CAPTION_IMAGE_SIZE, CAPTION_IMAGE_SIZE, 3, "unit"),
        text=kerve_manifest.TextSpec(vocabulary=CAPTION_VOCABULARY, max_length=CAPTION_MAX_LENGTH),
        batching=kerve_manifest.BatchingSpec(**batching),
        description="test model: a tiny random captioner",
    )


def publish_captioner(
    repository: Path, name: str = "captioner", cell: str = "lstm", model=None, **batching
) -> Path:
    model = model if model is not None else build_captioner(cell)
    return export.publish(model, captioning_manifest(**batching), repository, name)


def build_identity_denoiser(channels: int = 3) -> keras.Model:
    """A fully convolutional model that returns its input: denoising with no change."""
    image = keras.Input((None, None, channels), name="image")
    return keras.Model(image, keras.layers.Identity()(image))


def build_sigma_denoiser(channels: int = 3) -> keras.Model:
    """A model taking [image, noise_map] that returns image + noise_map, so the sigma
    it was given shows in its output: sigma pixel levels added (with "unit" scaling)."""
    image = keras.Input((None, None, channels), name="image")
    noise_map = keras.Input((None, None, 1), name="noise_map")
    return keras.Model([image, noise_map], keras.layers.Add()([image, noise_map]))


def build_conv_denoiser(channels: int = 3, layers: int = 3, seed: int = 0) -> keras.Model:
    """A small real denoiser: ``layers`` 3x3 "same" convolutions (receptive radius
    ``layers``), each a box blur per channel with random weights mixed in."""
    rng = np.random.default_rng(seed)
    image = keras.Input((None, None, channels), name="image")
    return keras.Model(image, _blurring_convs(image, channels, layers, rng))


def _blurring_convs(x, channels: int, layers: int, rng: np.random.Generator):
    """``layers`` 3x3 "same" convolutions, each a box blur per channel with random weights
    mixed in (receptive radius ``layers``)."""
    for _ in range(layers):
        conv = keras.layers.Conv2D(channels, 3, padding="same")
        x = conv(x)
        kernel = np.eye(channels) / 9 + rng.normal(0, 0.03, (3, 3, channels, channels))
        conv.set_weights([kernel.astype(np.float32), rng.normal(0, 0.02, channels).astype("f4")])
    return x


def build_cropping_denoiser(channels: int = 3) -> keras.Model:
    """A broken denoiser: a "valid" 3x3 convolution, its output 2 pixels smaller."""
    image = keras.Input((None, None, channels), name="image")
    return keras.Model(image, keras.layers.Conv2D(channels, 3, padding="valid")(image))


def denoising_manifest(
    tile: int = 32,
    margin: int = 4,
    channels: int = 3,
    sigma_input: bool = False,
    sigma_range: tuple[float, float] = (0.0, 50.0),
    **batching,
) -> kerve_manifest.Manifest:
    return kerve_manifest.DenoisingManifest(
        input=kerve_manifest.InputSpec.scaled(tile, tile, channels, "unit"),
        denoising=kerve_manifest.DenoisingSpec(
            margin=margin, sigma_range=sigma_range, sigma_input=sigma_input
        ),
        batching=kerve_manifest.BatchingSpec(**batching),
        description="test model: a tiny denoiser",
    )


def publish_denoiser(
    repository: Path, name: str = "denoiser", model=None, **manifest_options
) -> Path:
    manifest = denoising_manifest(**manifest_options)
    if model is None:
        model = build_identity_denoiser(manifest.input.channels)
    return export.publish(model, manifest, repository, name)


def build_nearest_upscaler(scale: int = 2, channels: int = 3) -> keras.Model:
    """A fully convolutional upscaler that repeats each pixel into a ``scale`` x ``scale``
    block: its output is known exactly (np.repeat along both axes)."""
    image = keras.Input((None, None, channels), name="image")
    return keras.Model(image, keras.layers.UpSampling2D(scale, interpolation="nearest")(image))


def build_conv_upscaler(
    scale: int = 2, channels: int = 3, layers: int = 3, seed: int = 0
) -> keras.Model:
    """A small real upscaler, ESPCN-like: ``layers`` 3x3 "same" convolutions (receptive
    radius ``layers`` input pixels), each a box blur per channel with random weights mixed
    in, then a transposed convolution of kernel and stride ``scale`` that makes each pixel
    a ``scale`` x ``scale`` block of its own (a learned pixel shuffle)."""
    rng = np.random.default_rng(seed)
    image = keras.Input((None, None, channels), name="image")
    outputs = _blurring_convs(image, channels, layers, rng)
    shuffle = keras.layers.Conv2DTranspose(channels, scale, strides=scale, name="shuffle")
    outputs = shuffle(outputs)
    kernel = np.eye(channels) + rng.normal(0, 0.1, (scale, scale, channels, channels))
    shuffle.set_weights([kernel.astype(np.float32), np.zeros(channels, np.float32)])
    return keras.Model(image, outputs)


def upscaling_manifest(
    scale: int = 2, tile: int = 32, margin: int = 4, channels: int = 3, **batching
) -> kerve_manifest.Manifest:
    return kerve_manifest.UpscalingManifest(
        input=kerve_manifest.InputSpec.scaled(tile, tile, channels, "unit"),
        upscaling=kerve_manifest.UpscalingSpec(scale=scale, margin=margin),
        batching=kerve_manifest.BatchingSpec(**batching),
        description=f"test model: a tiny {scale}x upscaler",
    )


def publish_upscaler(
    repository: Path, name: str = "upscaler", model=None, **manifest_options
) -> Path:
    """An upscaler (by default the exact nearest-neighbour one) as ``name``'s next version."""
    manifest = upscaling_manifest(**manifest_options)
    if model is None:
        model = build_nearest_upscaler(manifest.upscaling.scale, manifest.input.channels)
    return export.publish(model, manifest, repository, name)


GENERATOR_LABELS = ["circle", "square", "cross", "ring"]
GENERATOR_SIZE = 12
LATENT_DIM = 8


def build_tiny_generator(
    channels: int = 1,
    size: int = GENERATOR_SIZE,
    latent_dim: int = LATENT_DIM,
    num_classes: int = len(GENERATOR_LABELS),
    seed: int = 3,
) -> keras.Model:
    """A tiny real class-conditional generator following the service's contract.

    [latent (batch, latent_dim), label int32 (batch, 1)] -> tanh images (batch, size,
    size, channels): the label's embedding joins the latent, a Dense layer makes a
    (size/2)² map that a strided Conv2DTranspose doubles. Weights come from ``seed``.
    """
    latent = keras.Input((latent_dim,), name="latent")
    label = keras.Input((1,), dtype="int32", name="label")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(num_classes, latent_dim)(label))
    features = keras.layers.Dense((size // 2) ** 2 * 4, activation="relu")(
        keras.layers.Concatenate()([latent, embedded])
    )
    grid = keras.layers.Reshape((size // 2, size // 2, 4))(features)
    upsample = keras.layers.Conv2DTranspose(channels, 3, strides=2, padding="same")
    images = keras.layers.Activation("tanh")(upsample(grid))
    model = keras.Model([latent, label], images, name="generator")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                           for w in layer.get_weights()])  # fmt: skip
    return model


def generation_manifest(
    size: int = GENERATOR_SIZE,
    channels: int = 1,
    latent_dim: int = LATENT_DIM,
    labels: list[str] | None = None,
    **batching,
) -> kerve_manifest.Manifest:
    return kerve_manifest.GenerationManifest(
        input=kerve_manifest.InputSpec.scaled(size, size, channels, "symmetric"),
        labels=labels or GENERATOR_LABELS,
        generation=kerve_manifest.GenerationSpec(latent_dim=latent_dim),
        batching=kerve_manifest.BatchingSpec(**batching),
        description="test model: a tiny random conditional generator",
    )


def publish_generator(
    repository: Path, name: str = "generator", model=None, **manifest_options
) -> Path:
    manifest = generation_manifest(**manifest_options)
    if model is None:
        model = build_tiny_generator(
            manifest.input.channels, manifest.input.height, manifest.generation.latent_dim,
            len(manifest.labels),
        )  # fmt: skip
    return export.publish(model, manifest, repository, name)


def build_tensor_model(sorted_names: bool = True) -> keras.Model:
    """A tiny real two-input tensor model, inputs and outputs named by dicts.

    ``x`` float32 (4,) and ``k`` int32 (2,) in; ``sum`` (1,), the sum of x's and k's
    values, and ``scaled`` (4,), twice x, out. Only built-in layers: it loads safely.
    ``sorted_names``: the dicts' keys in sorted order, as Keras orders ``model.inputs``
    and ``model.outputs``; else in the order x, k and sum, scaled.
    """
    x = keras.Input((4,), name="x")
    k = keras.Input((2,), dtype="int32", name="k")
    k_float = keras.layers.Rescaling(1.0)(k)  # casts to float32
    total = keras.layers.Dense(1, name="sum")
    summed = total(keras.layers.Concatenate()([x, k_float]))
    total.set_weights([np.ones((6, 1), np.float32), np.zeros(1, np.float32)])
    scaled = keras.layers.Rescaling(2.0, name="scaled")(x)
    inputs, outputs = {"x": x, "k": k}, {"sum": summed, "scaled": scaled}
    if sorted_names:
        inputs, outputs = dict(sorted(inputs.items())), dict(sorted(outputs.items()))
    return keras.Model(inputs, outputs)


def publish_tensor_model(repository: Path, name: str = "pair", **batching) -> Path:
    manifest = kerve_manifest.TensorManifest(
        batching=kerve_manifest.BatchingSpec(**batching),
        description="test model: two named inputs, two named outputs",
    )
    return export.publish(build_tensor_model(), manifest, repository, name)


async def serving(runtime, work, threads: int = 2):
    """Run ``work(runtime)`` while a runtime built outside a server serves, on a pool of its
    own (``threads`` wide) with an unbounded pixel budget."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        runtime.start(Admission(pool, PixelBudget(10**12)))
        try:
            return await work(runtime)
        finally:
            await runtime.stop()


@contextlib.contextmanager
def live_server(settings: Settings, ready: bool = True, **uvicorn_options):
    """A real uvicorn server on 127.0.0.1, in a thread; yields its base URL once started
    and, with ``ready``, once /readyz says so (for clients that need a socket:
    tritonclient, a browser, raw sockets)."""
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=free_port(), log_config=None,
        **uvicorn_options,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    try:
        wait_until(lambda: server.started, timeout_s=60)
        if ready:
            wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def post_for_image(client, body: bytes, url: str, **params) -> tuple[dict, Image.Image]:
    """An image task's JSON answer to a PNG body, and the image it carries (200 asserted)."""
    response = client.post(url, content=body, headers={"Content-Type": "image/png"}, params=params)
    assert response.status_code == 200, response.text
    found = response.json()
    return found, Image.open(io.BytesIO(base64.b64decode(found["image"]["b64"])))


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_colour_folders(root: Path, per_class: int = 12, size: int = 12) -> Path:
    """Class folders red/, green/, blue/ (COLOUR_LABELS) of noisy solid-colour PNGs."""
    rng = np.random.default_rng(5)
    for index, name in enumerate(COLOUR_LABELS):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3))
            pixels[..., index] += 180
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root
