"""The upscaler script: its network, photo split, tiling, receptive field, and one short run."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

import kerve_manifest
from training import upscaler


def make_photos(folder, count: int = 7) -> None:
    """Small generated pictures (gradients, shapes, noise) in nested folders and formats."""
    rng = np.random.default_rng(0)
    for index in range(count):
        y, x = np.mgrid[0:56, 0:64]
        base = np.stack([x * 3, y * 4, (x + y) * 2], -1) + rng.integers(0, 40, 3)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(5):
            x0, y0 = rng.integers(0, 48, 2)
            box = [int(x0), int(y0), int(x0 + rng.integers(6, 16)), int(y0 + rng.integers(6, 16))]
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        sub = folder / ("a" if index % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        image.save(sub / f"photo{index}.{'png' if index % 3 else 'jpg'}")
    (folder / "README.txt").write_text("not a photo")


def test_split_is_by_photo_reproducible_and_disjoint(tmp_path):
    make_photos(tmp_path)
    first = upscaler.load_photos(tmp_path, 4, 24, None)
    again = upscaler.load_photos(tmp_path, 4, 24, None)
    names = {split: set(photos) for split, photos in first.items()}
    assert names == {split: set(photos) for split, photos in again.items()}
    assert sum(len(n) for n in names.values()) == 7  # the README is skipped
    assert len(names["test"]) == 1 and len(names["val"]) == 1
    assert not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    assert all(photo.shape[-1] == 3 for photo in first["train"].values())
    other = upscaler.load_photos(tmp_path, 5, 24, None)
    assert any(names[s] != set(other[s]) for s in names)
    make_photos(tmp_path / "few", count=2)
    with pytest.raises(ValueError, match="a split needs at least 3"):
        upscaler.load_photos(tmp_path / "few", 4, 24, None)


def test_network_upscales_any_size_and_knows_its_receptive_field():
    model = upscaler.build_model(3, 4, 1)
    images = np.random.default_rng(1).random((2, 7, 10, 3), np.float32)
    assert model.predict_on_batch(images).shape == (2, 21, 30, 3)
    radius, scale = upscaler.receptive_field(model)
    assert (radius, scale) == (4.0, 3)  # head 1 + block 2 + body_out 1; bicubic reads 2


def test_an_untrained_network_is_bicubic_interpolation():
    model = upscaler.build_model(2, 4, 1)
    images = np.random.default_rng(6).random((1, 12, 9, 3), np.float32)
    expected = tf.image.resize(images, (24, 18), "bicubic").numpy()
    inner = (slice(None), slice(6, -6), slice(6, -6))  # zero padding at the borders
    np.testing.assert_allclose(model.predict_on_batch(images)[inner], expected[inner], atol=1e-5)


def test_tiles_stitch_exactly_where_the_margin_covers_the_receptive_field():
    model = upscaler.build_model(2, 4, 1)
    rng = np.random.default_rng(2)  # every path live, the zero-started sub-pixel layer too
    model.set_weights([rng.normal(0, 0.2, w.shape) for w in model.get_weights()])
    image = np.random.default_rng(3).integers(0, 256, (23, 31, 3), np.uint8)
    unit = upscaler.Scaling(0.0, 255.0)
    differences = upscaler.tiling_check(model, image, 2, unit, 13, [0, 4])
    assert differences[4] < 1e-3
    assert differences[0] > 0.1


def test_tile_geometry_with_a_pointwise_upscale():
    """Nearest-neighbour upsampling has no context: any tiling must give np.repeat exactly."""
    image = keras.Input((None, None, 3))
    model = keras.Model(image, keras.layers.UpSampling2D(2)(image))
    photo = np.random.default_rng(4).integers(0, 256, (17, 9, 3), np.uint8)
    raw = upscaler.Scaling(0.0, 1.0)
    for tile, margin in ((4, 0), (8, 3), (5, 2)):
        output = upscaler.upscale(model, photo, 2, raw, tile, margin)
        np.testing.assert_array_equal(output, photo.repeat(2, 0).repeat(2, 1))


def test_a_downsampling_layer_has_no_margin_to_give():
    image = keras.Input((None, None, 3))
    model = keras.Model(image, keras.layers.Conv2D(3, 3, strides=2)(image))
    with pytest.raises(ValueError, match="downsamples"):
        upscaler.receptive_field(model)


def short_run(tmp_path, *extra: str):
    return upscaler.main(
        ["--data", str(tmp_path / "photos"), "--patch-size", "24", "--epochs", "2",
         "--steps-per-epoch", "3", "--batch-size", "4", "--tile-size", "16", "--verbose", "0",
         "--out", str(tmp_path / "models" / "upscaler"), *extra]
    )  # fmt: skip


def test_short_run_publishes_model_metrics_and_picture(tmp_path):
    make_photos(tmp_path / "photos")
    path = short_run(tmp_path, "--scale", "2", "--channels", "4", "--blocks", "1")
    manifest = kerve_manifest.read_manifest(path)
    assert isinstance(manifest, kerve_manifest.UpscalingManifest)
    assert (manifest.upscaling.scale, manifest.upscaling.margin) == (2, 4)
    assert (manifest.input.height, manifest.input.std) == (16, [255.0])
    table = manifest.metrics["psnr_ssim"]
    assert set(table) == {"model", "bicubic", "lanczos"}
    for row in table.values():
        assert 10 < row["psnr"] < 60 and 0 < row["ssim"] <= 1
    assert manifest.metrics["tiling"]["max_abs_difference_levels"] < 0.01
    assert set(manifest.metrics["test_photos"]).isdisjoint(manifest.provenance["train_photos"])
    assert manifest.provenance["epochs_run"] == 2
    with Image.open(path / "test_samples.png") as picture:
        assert picture.width > 3 * picture.height  # four panels side by side
    assert (path / "learning_curves.png").exists() and (path / "history.csv").exists()
    assert "val_psnr" in (path / "history.csv").read_text().splitlines()[0]
    model = keras.saving.load_model(path / kerve_manifest.MODEL_FILE, safe_mode=True)
    assert model.predict_on_batch(np.zeros((1, 16, 16, 3), np.float32)).shape == (1, 32, 32, 3)

    # Fine-tuning the published version starts from it and reports where it started.
    tuned = short_run(tmp_path, "--init", str(path))
    tuned_manifest = kerve_manifest.read_manifest(tuned)
    assert tuned.name == "2" and tuned_manifest.provenance["init"] == str(path)
    assert "init" in tuned_manifest.metrics["psnr_ssim"]
    assert tuned_manifest.upscaling.scale == 2
