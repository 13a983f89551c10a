"""scico's pretrained DnCNN in Keras: the flax msgpack reader, the network, the widening.

The fixtures come from scico and flax themselves (tests/fixtures/make_dncnn_fixture.py).
scico's convolutions pad circularly and Keras's with zeros, so each input is wrapped
around by the receptive radius first: the centre is then exactly scico's output.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from training import dncnn

FIXTURES = Path(__file__).parent.parent / "fixtures"
TINY_DEPTH, TINY_WIDTH = 4, 8


def tiny_variables(channels: int) -> dict:
    """A depth-4, 8-filter DnCNNNet's flax variables (channels 2: as the N variants)."""
    fixture = np.load(FIXTURES / "dncnn_tiny_flax.npz")
    return dncnn.read_variables(fixture[f"mpk_{channels}"].tobytes())


def run_wrapped(model, image: np.ndarray, radius: int, sigma: float | None = None) -> np.ndarray:
    """The model on ``image`` (batch, h, w, 1) wrapped around by ``radius``, as scico's
    circular padding sees it; the centre, (batch, h, w)."""
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="wrap")
    feed = padded if sigma is None else [padded, np.full_like(padded, sigma)]
    return np.asarray(model.predict_on_batch(feed))[:, radius:-radius, radius:-radius, 0]


@pytest.mark.parametrize("channels", [1, 2])
def test_reader_and_network_reproduce_flax_on_a_tiny_dncnn(channels):
    fixture = np.load(FIXTURES / "dncnn_tiny_flax.npz")
    model = dncnn.build(TINY_DEPTH, 1, sigma_input=channels == 2, width=TINY_WIDTH)
    dncnn.assign(model, tiny_variables(channels))
    image = fixture[f"input_{channels}"]  # (1, 16, 16, channels): channel 1 the sigma plane
    sigma = float(image[0, 0, 0, 1]) if channels == 2 else None
    output = run_wrapped(model, image[..., :1], TINY_DEPTH, sigma)
    np.testing.assert_allclose(output, fixture[f"output_{channels}"][..., 0], atol=1e-5)
    # zero padding instead of wrapping differs at the border: the wrap above is needed
    plain = model.predict_on_batch(image[..., :1] if sigma is None else [image[..., :1],
                                   image[..., 1:]])[..., 0]  # fmt: skip
    assert np.abs(plain - fixture[f"output_{channels}"][..., 0]).max() > 1e-3


@pytest.mark.parametrize("variant", ["17M", "17N"])
def test_keras_dncnn_reproduces_scicos_output_within_1e4(variant):
    if dncnn.find_weights(variant) is None:
        pytest.skip(
            f"no scico {dncnn.SCICO_VERSION} wheel in {dncnn.pypi_cache()}: `pip download "
            f"--no-deps scico=={dncnn.SCICO_VERSION} -d {dncnn.pypi_cache()}` adds it"
        )
    fixture = np.load(FIXTURES / f"dncnn{variant}_scico.npz")
    model = dncnn.pretrained(variant, fetch=False)
    sigma = float(fixture["sigma"]) if variant.endswith("N") else None
    noisy = fixture["noisy"][np.newaxis, ..., np.newaxis]
    output = run_wrapped(model, noisy, dncnn.RECEPTIVE_RADIUS[17], sigma)[0]
    np.testing.assert_allclose(output, fixture["denoised"], atol=1e-4)
    assert np.abs(fixture["denoised"] - fixture["noisy"]).mean() > 0.05  # it did denoise


def tiny_colour(sigma_input: bool = True):
    """The colour network made of two tiny gray ones, and the gray one alone."""
    variables = tiny_variables(2 if sigma_input else 1)
    networks = []
    for name in ("luminance", "chroma", "gray"):
        network = dncnn.build(TINY_DEPTH, 1, sigma_input, width=TINY_WIDTH, name=name)
        dncnn.assign(network, variables)
        networks.append(network)
    return dncnn.build_colour(tuple(networks[:2]), sigma_input), networks[2]


def test_colour_network_denoises_opponent_planes_each_told_its_noise_level():
    colour, gray = tiny_colour()
    image = np.random.default_rng(3).random((1, 20, 24, 3), np.float32)
    sigma = 0.1
    planes = image @ dncnn.OPPONENT.T + dncnn.OPPONENT_OFFSET  # Y, C1 + 0.5, C2 + 0.5
    levels = sigma * np.linalg.norm(dncnn.OPPONENT, axis=1)  # independent noise per channel
    denoised = np.concatenate(
        [gray.predict_on_batch([planes[..., k : k + 1], np.full_like(image[..., :1], levels[k])])
         for k in range(3)], axis=-1,
    )  # fmt: skip
    expected = (denoised - dncnn.OPPONENT_OFFSET) @ np.linalg.inv(dncnn.OPPONENT).T
    answer = colour.predict_on_batch([image, np.full_like(image[..., :1], sigma)])
    np.testing.assert_allclose(answer, expected, atol=1e-5)


def test_a_gray_image_through_the_colour_network_gets_the_gray_networks_answer():
    colour, gray = tiny_colour()
    image = np.random.default_rng(4).random((1, 20, 20, 1), np.float32)
    sigma_map = np.full_like(image, 0.1)
    expected = gray.predict_on_batch([image, sigma_map])  # told the whole sigma
    answer = colour.predict_on_batch([np.repeat(image, 3, axis=-1), sigma_map])
    # the service answers a gray upload with the mean of the three channels
    np.testing.assert_allclose(answer.mean(axis=-1, keepdims=True), expected, atol=1e-5)
    # one channel a level off is colour again: the luminance is told sigma / sqrt(3)
    tinted = np.repeat(image, 3, axis=-1) + np.float32([0, 0, 1 / 255])
    told = colour.predict_on_batch([tinted, sigma_map]).mean(axis=-1, keepdims=True)
    assert np.abs(told - expected).max() > 1e-3


def test_the_colour_network_saves_and_loads_safely_and_fine_tunes_only_the_networks(tmp_path):
    colour, gray = tiny_colour(sigma_input=False)
    dncnn.freeze_batchnorm(colour)
    kernels = [layer.kernel for layer in gray.layers if isinstance(layer, keras.layers.Conv2D)]
    # the two networks' convolutions; neither BatchNorm nor the colour transforms
    assert len(colour.trainable_weights) == 2 * len(kernels)
    assert colour.count_params() - sum(int(np.prod(w.shape)) for w in colour.trainable_weights) > 0
    assert sum(int(np.prod(w.shape)) for w in colour.trainable_weights) == 2 * sum(
        int(np.prod(k.shape)) for k in kernels
    )
    colour.save(tmp_path / "colour.keras")
    again = keras.saving.load_model(tmp_path / "colour.keras", compile=False, safe_mode=True)
    image = np.random.default_rng(5).random((2, 16, 16, 3), np.float32)
    np.testing.assert_allclose(again.predict_on_batch(image), colour.predict_on_batch(image))


def test_weights_of_another_depth_are_refused():
    model = dncnn.build(TINY_DEPTH + 1, 1, width=TINY_WIDTH)
    with pytest.raises(ValueError, match="hold 2 conv\\+BN blocks, the model 3"):
        dncnn.assign(model, tiny_variables(1))
    wide = dncnn.build(TINY_DEPTH, 1, width=TINY_WIDTH * 2)
    with pytest.raises(ValueError, match="conv_start"):
        dncnn.assign(wide, tiny_variables(1))


def test_weights_are_read_from_the_wheel_without_scico(tmp_path):
    data = np.load(FIXTURES / "dncnn_tiny_flax.npz")["mpk_2"].tobytes()
    wheel = tmp_path / f"scico-{dncnn.SCICO_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(dncnn.MPK_PATH.format("17N"), data)
    variables = dncnn.load_variables("17N", cache_dir=tmp_path, fetch=False)
    kernel = variables["params"]["conv_start"]["kernel"]
    assert kernel.shape == (3, 3, 2, TINY_WIDTH) and kernel.dtype == np.float32
    assert set(variables["batch_stats"]["ConvBNBlock_1"]["BatchNorm_0"]) == {"mean", "var"}
    with pytest.raises(FileNotFoundError, match="no scico"):
        dncnn.load_variables("17N", cache_dir=tmp_path / "empty", fetch=False)
    with pytest.raises(ValueError, match="unknown DnCNN variant"):
        dncnn.load_variables("17X", cache_dir=tmp_path, fetch=False)


def test_init_names_and_the_noise_levels_each_variant_is_published_for():
    assert dncnn.parse_init("dncnn17-N") == "17N"
    assert dncnn.parse_init("dncnn6m") == "6M"
    assert dncnn.parse_init("models/denoiser/1") is None
    assert dncnn.parse_init("dncnn12-M") is None
    for depth in (6, 17):
        ranges = [dncnn.VARIANTS[f"{depth}{level}"].sigma_range for level in "LMH"]
        assert ranges[0][0] > 0 and ranges[0][1] == ranges[1][0] and ranges[1][1] == ranges[2][0]
        for level in "LMH":  # each covers the level it was trained at
            low, high = dncnn.VARIANTS[f"{depth}{level}"].sigma_range
            assert low <= dncnn.VARIANTS[f"{depth}{level}"].trained_sigma[0] <= high
        assert not dncnn.VARIANTS[f"{depth}M"].sigma_input
        assert dncnn.VARIANTS[f"{depth}N"].sigma_input
        assert dncnn.VARIANTS[f"{depth}N"].sigma_range == (0, 51)
