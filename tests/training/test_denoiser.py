"""The denoiser: its networks, noise pipeline, photo split, classical baselines and script."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kerve_manifest
from tests.helpers import encode, make_settings, start_client, wait_ready
from training import classical_denoisers, denoiser, dncnn, pipeline
from training.data import photos
from training.data.image_files import DataError

FIXTURES = Path(__file__).parent.parent / "fixtures"


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


def test_script_trains_publishes_fine_tunes_and_the_service_serves_it(tmp_path, monkeypatch):
    # the built-in photos, fewer of them: every run measures the test photos three times
    few = ("coins", "rocket", "chelsea", "camera", "coffee")
    monkeypatch.setattr(photos, "PHOTOS", {name: photos.PHOTOS[name] for name in few})
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
    assert manifest.metrics["test_photos"] == ["camera", "coffee"]
    assert manifest.provenance["train_photos"] == ["coins", "rocket"]
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


# -- the user's photos (--data), Debian's wallpapers, scico's DnCNN (--init dncnn17-N) ----------
def photo_folder_for_test(root: Path) -> Path:
    """Nine small real-photo crops, nested, in five formats, two of them gray."""
    sources = {"a/astronaut.jpg": photos.read_photo("astronaut"),
               "a/b/coffee.png": photos.read_photo("coffee"),
               "chelsea.webp": photos.read_photo("chelsea"),
               "c/camera.tif": photos.read_photo("camera"),
               "c/d/rocket.bmp": photos.read_photo("rocket"),
               "c/d/coins.png": photos.read_photo("coins"),
               "e/china.jpg": photos.read_photo("china"),
               "e/retina.png": photos.read_photo("retina"),
               "e/f/brick.webp": photos.read_photo("brick")}  # fmt: skip
    for index, (name, pixels) in enumerate(sources.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        top, left = 20 * index, 30 * index
        Image.fromarray(pixels[top : top + 72, left : left + 88]).save(path)
    return root


FAST = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--patch-size", "32",
        "--tile-size", "64", "--tile-margin", "8", "--no-baselines", "--verbose", "0"]  # fmt: skip


def post_denoise(client, url: str, photo: np.ndarray, **params) -> tuple[dict, Image.Image]:
    response = client.post(
        url, content=encode(photo, "PNG"), headers={"Content-Type": "image/png"}, params=params
    )
    assert response.status_code == 200, response.text
    found = response.json()
    return found, Image.open(io.BytesIO(base64.b64decode(found["image"]["b64"])))


def test_users_photo_folder_trains_publishes_and_is_served(tmp_path):
    data = photo_folder_for_test(tmp_path / "my-photos")
    out = tmp_path / "models" / "my-denoiser"
    arguments = ["--data", str(data), "--split", "0.4,0.2,0.4", "--out", str(out), *FAST]
    path = denoiser.main(["--arch", "unet", "--depth", "2", "--channels", "4", *arguments])
    manifest = kerve_manifest.read_manifest(path)
    found = {split: manifest.provenance[f"{split}_photos"] for split in ("train", "val")}
    found["test"] = manifest.metrics["test_photos"]
    assert [len(found[split]) for split in ("train", "val", "test")] == [5, 1, 3]
    assert sorted(sum(found.values(), [])) == sorted(
        p.relative_to(data).as_posix() for p in data.rglob("*.*")
    )
    dataset = manifest.provenance["dataset"]
    assert str(data) in dataset and "seeded split" in dataset
    assert set(manifest.metrics["psnr_ssim"]["25"]) == {"noisy", "model"}

    colour = photos.read_photo("astronaut")[100:150, 200:260]
    with start_client(make_settings(tmp_path / "models")) as client:
        wait_ready(client)
        answer, image = post_denoise(client, "/v1/models/my-denoiser/versions/1/denoise", colour)
    assert answer["model"] == "my-denoiser" and answer["version"] == 1
    assert (answer["width"], answer["height"], answer["mode"]) == (60, 50, "RGB")
    assert answer["tiles"] >= 1 and answer["sigma"] is None
    assert image.format == "PNG" and image.size == (60, 50) and image.mode == "RGB"


@pytest.mark.parametrize("problem", ["unreadable", "too small", "empty"])
def test_broken_photo_folders_are_refused_before_training(tmp_path, problem):
    data = photo_folder_for_test(tmp_path / "photos")
    culprit = data
    if problem == "unreadable":
        culprit = data / "c" / "scan.png"
        culprit.write_bytes(b"\x89PNG but truncated")
        expected = f"{culprit}: cannot read the image"
    elif problem == "too small":
        culprit = data / "a" / "thumb.jpg"
        Image.fromarray(photos.read_photo("coffee")[:20, :40]).save(culprit)
        expected = f"{culprit}: 40x20: too small for one 32x32 patch"
    else:
        culprit = tmp_path / "nothing"
        (culprit / "deep").mkdir(parents=True)
        expected = f"{culprit}: no photos found"
    out = tmp_path / "models" / "d"
    with pytest.raises(DataError) as error:
        denoiser.main(["--data", str(culprit if problem == "empty" else data),
                       "--out", str(out), *FAST])  # fmt: skip
    assert expected in str(error.value)
    assert not out.exists()  # nothing trained, nothing published


def test_epochs_zero_needs_something_to_publish():
    with pytest.raises(SystemExit):
        denoiser.parse_args(["--epochs", "0"])


def test_whole_photo_denoising_mirrors_a_margin_like_the_service():
    model = denoiser.build_model("dncnn", 3, 4, 1, noise_map=False)
    noisy = np.random.default_rng(4).random((21, 17))
    plain = denoiser.denoise(model, noisy, 25)
    mirrored = denoiser.denoise(model, noisy, 25, margin=3)
    assert mirrored.shape == plain.shape == (21, 17)
    # three 3x3 convs see 3 pixels out: inside that, the padding makes no difference
    np.testing.assert_allclose(mirrored[3:-3, 3:-3], plain[3:-3, 3:-3], atol=1e-5)
    assert not np.allclose(mirrored[0], plain[0])
    padded = np.pad(noisy, 3, mode="symmetric")
    np.testing.assert_allclose(mirrored, denoiser.denoise(model, padded, 25)[3:-3, 3:-3], atol=1e-5)
    unet = denoiser.build_model("unet", 2, 4, 3, noise_map=False)
    assert denoiser.denoise(unet, noisy, 25, margin=5).shape == (21, 17)


def test_debian_wallpapers_join_the_photos_only_where_installed(monkeypatch, capsys):
    wallpapers = [p for p in photos.PHOTOS.values() if p.package]
    assert len(wallpapers) == 37
    assert {p.package for p in wallpapers} == {
        "mate-backgrounds", "lomiri-wallpapers-16.04", "plasma-workspace-wallpapers"}  # fmt: skip
    assert {"mate/LadyBird", "lomiri/life", "plasma/EveningGlow"} <= {
        p.name for p in wallpapers if p.split == "test"
    }
    missing = photos.Photo("mate/Gone", "test", False, "/nonexistent/Gone.jpg", "mate-backgrounds")
    monkeypatch.setitem(photos.PHOTOS, missing.name, missing)
    photos._say_what_is_missing.cache_clear()
    assert "mate/Gone" not in photos.names("test")
    photos.names("train")
    lines = [line for line in capsys.readouterr().out.splitlines() if "left out" in line]
    assert len(lines) == 1 and "apt-get install" in lines[0] and "mate-backgrounds" in lines[0]
    photos._say_what_is_missing.cache_clear()


def test_wallpapers_are_shrunk_upright_to_512_pixels(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8  # a viewer turns it 90 degrees counter-clockwise
    big = np.random.default_rng(5).integers(0, 256, (1200, 2000, 3), np.uint8)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95, exif=exif)
    Image.fromarray(big[..., 0]).save(tmp_path / "gray.jpg")
    shrunk = photos.read_wallpaper(tmp_path / "big.jpg")
    assert shrunk.shape == (512, 307, 3) and shrunk.dtype == np.uint8
    assert photos.read_wallpaper(tmp_path / "gray.jpg").shape == (307, 512)


def tiny_pretrained(monkeypatch):
    """scico's DnCNN replaced by a depth-4, 8-filter one read the same way (flax msgpack),
    so that --init dncnn17-N runs in seconds; tests/training/test_dncnn.py checks the
    real weights."""
    fixture = np.load(FIXTURES / "dncnn_tiny_flax.npz")
    variables = dncnn.read_variables(fixture["mpk_2"].tobytes())

    def pretrained(variant, image_channels=1, cache_dir=None, fetch=True):
        assert variant == "17N"
        networks = []
        for name in ("luminance", "chroma") if image_channels == 3 else ("dncnn",):
            networks.append(dncnn.build(4, 1, sigma_input=True, width=8, name=name))
            dncnn.assign(networks[-1], variables)
        return dncnn.build_colour(tuple(networks), True) if image_channels == 3 else networks[0]

    monkeypatch.setattr(dncnn, "pretrained", pretrained)


def test_dncnn_init_fine_tunes_a_colour_model_and_publishes_a_gray_one_as_it_is(
    tmp_path, monkeypatch
):
    tiny_pretrained(monkeypatch)
    data = photo_folder_for_test(tmp_path / "photos")
    models = tmp_path / "models"
    common = ["--init", "dncnn17-N", "--data", str(data), *FAST]
    colour = kerve_manifest.read_manifest(denoiser.main([*common, "--out", str(models / "colour")]))
    assert colour.input.channels == 3 and colour.denoising.sigma_input
    assert colour.denoising.sigma_range == (0, 50)
    assert "made colour (opponent space) and fine-tuned" in colour.description
    assert colour.provenance["pretrained"]["colour"].startswith("opponent space")
    assert colour.provenance["trained"] and colour.provenance["arch"] == "dncnn"

    gray_path = denoiser.main([*common, "--color", "gray", "--epochs", "0",
                               "--out", str(models / "gray")])  # fmt: skip
    gray = kerve_manifest.read_manifest(gray_path)
    assert gray.input.channels == 1 and gray.denoising.sigma_range == (0, 51)
    assert not gray.provenance["trained"] and "as it is" in gray.description
    assert gray.metrics["test_photos_as"] == "gray (luma)"
    assert (gray_path / "test_samples.png").exists()
    assert not (gray_path / "learning_curves.png").exists()

    photo = photos.read_photo("coffee")[50:110, 100:180]
    with start_client(make_settings(models)) as client:
        wait_ready(client)
        for name, mode in (("colour", "RGB"), ("gray", "RGB")):
            answer, image = post_denoise(client, f"/v1/models/{name}/denoise", photo, sigma=20)
            assert answer["sigma"] == 20 and answer["mode"] == mode and image.size == (80, 60)
        answer, _ = post_denoise(client, "/v1/models/gray/denoise", photo[..., 0])
        assert answer["mode"] == "L" and 0 <= answer["sigma"] <= 51  # estimated, in range
