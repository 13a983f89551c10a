"""The npm super-resolution models: fetched with npm (cached in ~/.cache/kerve/npm),
converted, checked against the package's own sample output, tiled and published."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest
import skimage.data

import kerve_manifest
from training import pretrained_upscalers, upscaler

SLIM_X4 = pretrained_upscalers.MODELS["esrgan-slim-x4"]


def _npm_reason() -> str | None:
    cached = (pretrained_upscalers.NPM_CACHE / SLIM_X4.package.folder / "package.json").is_file()
    if cached or shutil.which("npm"):
        return None
    return f"npm is not installed (apt-get install npm), which fetches {SLIM_X4.package.spec}"


pytestmark = pytest.mark.skipif(_npm_reason() is not None, reason=str(_npm_reason()))


@pytest.fixture(scope="module")
def slim_x4():
    model, pretrained = pretrained_upscalers.convert("esrgan-slim-x4")
    return model, pretrained


def test_esrgan_slim_x4_reproduces_the_package_sample(slim_x4):
    model, pretrained = slim_x4
    report = pretrained_upscalers.verify(model, pretrained)
    assert report["against"] == "assets/samples/4x/result.png"
    assert report["psnr"] >= pretrained_upscalers.MIN_FIXTURE_PSNR


def test_a_damaged_model_fails_verification(slim_x4):
    model, pretrained = slim_x4
    damaged = keras.models.clone_model(model)
    damaged.set_weights(model.get_weights())
    layer = damaged.get_layer("SR")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + 4.0])  # four levels brighter
    with pytest.raises(RuntimeError, match="verification failed"):
        pretrained_upscalers.verify(damaged, pretrained)


def test_tiles_stitch_into_the_whole_image_once_the_margin_covers_the_receptive_field(slim_x4):
    model, _ = slim_x4
    radius, scale = upscaler.receptive_field(model)
    # F_m1, F_0, 2 dense blocks, GFF_2: 5 px; UPN1 (5x5) 2 px, UPN2, UPN3: 2 px; SR 1/4 px.
    assert (radius, scale) == (9.25, 4)
    margin = int(np.ceil(radius))
    image = skimage.data.astronaut()[100:150, 200:247]
    raw = upscaler.Scaling(0.0, 1.0)
    differences = upscaler.tiling_check(model, image, 4, raw, 2 * margin + 8, [0, margin])
    assert differences[margin] < 0.01  # float round-off only
    assert differences[0] > 1.0  # without context the seams show


def test_published_version_carries_scale_margin_metrics_and_provenance(tmp_path, monkeypatch):
    astronaut = skimage.data.astronaut()
    small = {"astronaut": astronaut[96:192, 160:256], "camera": skimage.data.camera()[:64, :80]}
    monkeypatch.setattr(pretrained_upscalers.photos, "load", lambda split: small)
    path = pretrained_upscalers.main(
        ["--model", "esrgan-slim-x4", "--tile-size", "40", "--out", str(tmp_path / "upscaler")]
    )
    manifest = kerve_manifest.read_manifest(path)
    assert isinstance(manifest, kerve_manifest.UpscalingManifest)
    assert (manifest.upscaling.scale, manifest.upscaling.margin) == (4, 10)
    assert (manifest.input.height, manifest.input.mean, manifest.input.std) == (40, [0.0], [1.0])
    table = manifest.metrics["psnr_ssim"]
    assert set(table) == {"model", "bicubic", "lanczos"}
    assert [row["photo"] for row in table["model"]["per_photo"]] == ["astronaut", "camera"]
    assert manifest.metrics["verification"]["psnr"] >= 40
    assert manifest.metrics["tiling"]["max_abs_difference_levels"] < 0.01
    assert manifest.provenance["licence"] == "MIT"
    assert manifest.provenance["source"] == "npm @upscalerjs/esrgan-slim@1.0.0"
    assert (path / "test_samples.png").stat().st_size > 1000
    model = keras.saving.load_model(path / kerve_manifest.MODEL_FILE, safe_mode=True)
    assert model.predict_on_batch(np.zeros((1, 40, 40, 3), np.float32)).shape == (1, 160, 160, 3)


def test_npm_missing_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained_upscalers.shutil, "which", lambda name: None)
    with pytest.raises(pretrained_upscalers.NpmMissing, match="apt-get install npm"):
        pretrained_upscalers.fetch(SLIM_X4.package, tmp_path)
    assert "npm is not installed" in pretrained_upscalers.ensure_available(tmp_path)
