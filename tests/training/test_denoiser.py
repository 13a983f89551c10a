"""The denoiser: its networks, noise pipeline, photo split, classical baselines and script."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import kerve_manifest
from tests.helpers import encode, make_settings, start_client, wait_ready
from training import classical_denoisers, denoiser, pipeline
from training.data import photos


@pytest.mark.parametrize(("arch", "depth", "size"), [("dncnn", 4, (13, 29)), ("unet", 2, (16, 36))])
def test_networks_are_fully_convolutional_and_residual(arch, depth, size):
    model = denoiser.build_model(arch, depth, 8, 3, noise_map=False)
    images = np.random.default_rng(0).random((2, *size, 3), np.float32)
    assert model.predict_on_batch(images).shape == images.shape
    # With the noise estimate zeroed, what is left is the input itself.
    layer = model.get_layer("noise")
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    np.testing.assert_array_equal(model.predict_on_batch(images), images)


def test_noise_map_model_takes_sigma_as_a_second_input():
    model = denoiser.build_model("dncnn", 3, 8, 1, noise_map=True)
    assert [tuple(i.shape) for i in model.inputs] == [(None, None, None, 1)] * 2
    images = np.zeros((1, 8, 8, 1), np.float32)
    low = model.predict_on_batch([images, np.full_like(images, 0.0)])
    high = model.predict_on_batch([images, np.full_like(images, 0.2)])
    assert not np.allclose(low, high)


def test_unet_sides_must_be_multiples_of_its_downsampling():
    assert denoiser.size_multiple(denoiser.build_model("unet", 3, 4, 3, False)) == 8
    assert denoiser.size_multiple(denoiser.build_model("dncnn", 5, 4, 3, False)) == 1


def test_whole_photo_denoising_keeps_odd_sizes_and_gray():
    model = denoiser.build_model("unet", 2, 4, 3, noise_map=False)
    noisy = np.random.default_rng(1).random((19, 23))
    assert denoiser.denoise(model, noisy, 25).shape == (19, 23)
    assert denoiser.denoise(model, np.stack([noisy] * 3, -1), 25).shape == (19, 23, 3)


def test_training_pairs_carry_noise_of_the_drawn_level():
    patches = np.full((64, 16, 16, 3), 128, np.uint8)
    dataset = pipeline.make_denoising_dataset(patches, (20.0, 20.0), batch_size=32)
    noisy, clean = next(iter(dataset))
    residual = noisy.numpy() - clean.numpy()
    assert noisy.shape == (32, 16, 16, 3)
    assert residual.std() == pytest.approx(20 / 255, rel=0.05)
    np.testing.assert_allclose(clean.numpy(), 128 / 255, atol=1e-6)


def test_gray_patches_get_one_noise_plane_and_noise_maps_hold_sigma():
    patches = np.random.default_rng(2).integers(0, 256, (16, 8, 8, 3), np.uint8)
    dataset = pipeline.make_denoising_dataset(
        patches, (5.0, 50.0), batch_size=16, gray_fraction=1.0, noise_map=True
    )
    (noisy, noise_map), clean = next(iter(dataset))
    noisy, noise_map, clean = noisy.numpy(), noise_map.numpy(), clean.numpy()
    np.testing.assert_allclose(noisy[..., 0], noisy[..., 2], atol=1e-6)
    np.testing.assert_allclose(clean[..., 0], clean[..., 1], atol=1e-6)
    assert noise_map.shape == (16, 8, 8, 1)
    sigmas = noise_map[:, 0, 0, 0]
    assert np.all((sigmas >= 5 / 255) & (sigmas <= 50 / 255)) and len(set(sigmas)) > 1
    np.testing.assert_array_equal(noise_map, sigmas[:, None, None, None] + 0 * noise_map)


def test_test_photos_never_reach_training():
    splits = {split: set(photos.names(split)) for split in photos.SPLITS}
    assert not splits["train"] & splits["test"] and not splits["val"] & splits["test"]
    assert {"astronaut", "coffee", "flower", "camera"} <= splits["test"]
    assert not splits["train"] & splits["val"]


def test_patch_pool_cuts_every_scale_and_channel_layout():
    photo = np.arange(40 * 50, dtype=np.uint8).reshape(40, 50)
    rgb = photos.patch_pool({"p": photo}, 16, 8, channels=3)
    gray = photos.patch_pool({"p": photo}, 16, 8, channels=1)
    # scale 1: 4 x 5 patches; 0.8 (32x40): 3 x 4; 0.6 (24x30): 2 x 2
    assert rgb.shape == (20 + 12 + 4, 16, 16, 3) and gray.shape == (36, 16, 16, 1)
    np.testing.assert_array_equal(rgb[0, ..., 0], photo[:16, :16])
    np.testing.assert_array_equal(gray[1, ..., 0], photo[:16, 8:24])


def test_noise_is_reproducible_and_of_the_asked_level():
    clean = np.full((200, 200), 0.5)
    first, again = denoiser.add_noise(clean, 25, [1, 25]), denoiser.add_noise(clean, 25, [1, 25])
    np.testing.assert_array_equal(first, again)
    assert (first - clean).std() == pytest.approx(25 / 255, rel=0.02)


@pytest.mark.parametrize("method", sorted(classical_denoisers.METHODS))
def test_each_classical_method_removes_noise(method):
    clean = np.tile(np.linspace(0.2, 0.8, 32), (32, 1))
    noisy = denoiser.add_noise(clean, 25, [3])
    _, grid = classical_denoisers.METHODS[method]
    result = classical_denoisers.measure(method, grid[0], clean, noisy, 25 / 255)
    noisy_psnr = classical_denoisers.evaluate.image_quality(clean, noisy)["psnr"]
    assert result["psnr"] > noisy_psnr + 3 and result["seconds"] > 0


def test_tuning_picks_the_best_parameter_and_the_cache_runs_each_once(tmp_path, monkeypatch):
    calls = []

    def scale(noisy, sigma, parameter):
        calls.append(parameter)
        return noisy * parameter

    monkeypatch.setitem(classical_denoisers.METHODS, "scale", (scale, [0.5, 1.0, 2.0]))
    clean = np.full((8, 8), 0.5)
    cache = classical_denoisers.BaselineCache(tmp_path / "cache.json")
    assert classical_denoisers.tune("scale", clean, clean, 0.1, cache, ["p", 25]) == 1.0
    reopened = classical_denoisers.BaselineCache(tmp_path / "cache.json")
    assert classical_denoisers.tune("scale", clean, clean, 0.1, reopened, ["p", 25]) == 1.0
    assert calls == [0.5, 1.0, 2.0]


def test_sigma_range_parsing():
    assert denoiser.parse_sigma("0-50") == (0.0, 50.0)
    assert denoiser.parse_sigma("25") == (25.0, 25.0)
    with pytest.raises(Exception, match="LOW-HIGH"):
        denoiser.parse_sigma("50-10")


def test_script_trains_publishes_fine_tunes_and_the_service_serves_it(tmp_path):
    out = tmp_path / "models" / "denoiser"
    common = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--patch-size",
              "32", "--tile-size", "64", "--tile-margin", "8", "--no-baselines", "--verbose", "0",
              "--out", str(out)]  # fmt: skip
    first = denoiser.main(["--arch", "unet", "--depth", "2", "--channels", "4", *common])
    manifest = kerve_manifest.read_manifest(first)
    assert manifest.task == "denoising" and manifest.input.height == 64
    assert manifest.denoising == kerve_manifest.DenoisingSpec(margin=8, sigma_range=(0, 50))
    table = manifest.metrics["psnr_ssim"]
    assert sorted(table, key=int) == ["15", "25", "50"] and set(table["25"]) == {"noisy", "model"}
    for artifact in ("learning_curves.png", "test_samples.png", "history.csv"):
        assert (first / artifact).stat().st_size > 0

    assert denoiser.main(["--evaluate", str(first), "--no-baselines"]) == first
    assert kerve_manifest.list_versions(out) == [1]  # evaluating publishes nothing

    second = denoiser.main(["--init", str(first), "--sigma", "40-60", *common])
    tuned = kerve_manifest.read_manifest(second)
    assert second.name == "2" and tuned.provenance["init"] == str(first)
    assert tuned.denoising.sigma_range == (40, 60)

    photo = photos.read_photo("camera")[:70, :90]  # gray, and not a multiple of the tile
    with start_client(make_settings(tmp_path / "models")) as client:
        wait_ready(client)
        response = client.post(
            "/v1/models/denoiser/versions/1/denoise",
            content=encode(photo, "PNG"),
            headers={"Content-Type": "image/png", "Accept": "image/png"},
        )
    assert response.status_code == 200, response.text
    denoised = Image.open(io.BytesIO(response.content))
    assert denoised.mode == "L" and denoised.size == (90, 70)
