"""The conditional GAN: its networks, train_step, collapse watch, FID-F and the script."""

from __future__ import annotations

import base64
import io

import keras
import numpy as np
import pytest
from PIL import Image

import kerve_manifest
from tests.helpers import (
    COLOUR_LABELS,
    make_settings,
    publish_colour_classifier,
    start_client,
    wait_ready,
    write_colour_folders,
)
from training import evaluate, gan


def tiny_gan(num_classes: int = 3, size: int = 8, channels: int = 1) -> gan.ConditionalGAN:
    keras.utils.set_random_seed(3)
    generator = gan.build_generator(16, num_classes, size, channels, width=4)
    discriminator = gan.build_discriminator(num_classes, size, channels, width=4)
    model = gan.ConditionalGAN(generator, discriminator, 16, smoothing=0.1, seed=3)
    model.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3))
    return model


def test_networks_take_latent_and_label_as_the_service_expects():
    model = tiny_gan(num_classes=3, size=12, channels=3)
    generator, discriminator = model.generator, model.discriminator
    assert [tuple(tensor.shape) for tensor in generator.inputs] == [(None, 16), (None, 1)]
    latent = np.random.default_rng(0).standard_normal((5, 16), dtype=np.float32)
    labels = np.array([[0], [1], [2], [0], [1]], np.int32)
    images = np.asarray(generator.predict_on_batch([latent, labels]))
    assert images.shape == (5, 12, 12, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0
    logits, classes = discriminator.predict_on_batch([images, labels])
    assert (np.shape(logits), np.shape(classes)) == ((5, 1), (5, 3))


def test_the_label_changes_both_networks_outputs():
    model = tiny_gan()
    latent = np.ones((2, 16), np.float32)
    labels = np.array([[0], [2]], np.int32)
    images = np.asarray(model.generator.predict_on_batch([latent, labels]))
    assert not np.allclose(images[0], images[1])
    same_image = np.repeat(images[:1], 2, axis=0)
    scores, _ = model.discriminator.predict_on_batch([same_image, labels])
    assert scores[0, 0] != scores[1, 0]


def test_train_step_changes_both_networks_weights():
    model = tiny_gan()
    images = np.random.default_rng(1).integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(32) % 3
    before = [
        [w.copy() for w in network.get_weights()]
        for network in (model.generator, model.discriminator)
    ]
    history = model.fit(
        gan.make_dataset(images, labels, 8, seed=1), epochs=1, verbose=0, shuffle=False
    )
    for network, old in zip((model.generator, model.discriminator), before, strict=True):
        changed = [not np.allclose(a, b) for a, b in zip(network.get_weights(), old, strict=True)]
        assert sum(changed) >= len(changed) // 2, network.name
    for name in ("d_loss", "g_loss", "d_real", "d_fake", "d_class_loss"):
        assert np.isfinite(history.history[name][-1])


def test_dataset_scales_to_minus_one_one_with_int_labels():
    images = np.array([[[[0]], [[255]]]] * 4, np.uint8)  # 4 images of 2x1 pixels
    batch, labels = next(iter(gan.make_dataset(images, np.arange(4), 4, seed=0)))
    assert sorted(np.unique(batch.numpy())) == [-1.0, 1.0]
    assert labels.shape == (4, 1) and labels.dtype == "int32"


def test_collapse_watch_stops_after_patience_steps_of_rejected_fakes():
    watch = gan.CollapseWatch(patience=3)
    watch.set_model(tiny_gan())
    for score in (0.01, 0.01, 0.3, 0.01, 0.01):  # a good step resets the streak
        watch.on_train_batch_end(0, {"d_fake_step": score})
    assert watch.collapsed is None and not watch.model.stop_training
    watch.on_train_batch_end(0, {"d_fake_step": 0.02})
    assert watch.collapsed == 6 and watch.model.stop_training


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((4000, 3))
    same = evaluate.feature_statistics(features)
    assert evaluate.frechet_distance(same, same) == pytest.approx(0.0, abs=1e-6)
    shifted = evaluate.feature_statistics(features + [3.0, 0.0, 4.0])  # mean moves by 5
    assert evaluate.frechet_distance(same, shifted) == pytest.approx(25.0, rel=1e-6)
    # Unit vs doubled scale in one dimension: Tr(1 + 4 - 2·2) = 1.
    mean, cov = np.zeros(2), np.eye(2)
    assert evaluate.frechet_distance((mean, cov), (mean, np.diag([4.0, 1.0]))) == pytest.approx(1)


def run_script(data, out, *extra):
    arguments = ["--data", str(data), "--image-size", "12", "--width", "4", "--latent-dim",
                 "8", "--epochs", "2", "--batch-size", "8", "--eval-images", "30",
                 "--epoch-judge-images", "12", "--verbose", "0", "--out", str(out),
                 *extra]  # fmt: skip
    return gan.main(arguments)


def test_script_trains_judges_fine_tunes_and_the_service_serves_it(tmp_path):
    data = write_colour_folders(tmp_path / "data")
    repository = tmp_path / "models"
    publish_colour_classifier(repository, name="judge")  # knows red, green, blue
    common = ["--judge", str(repository / "judge"), "--cache-dir", str(tmp_path / "cache")]
    first = run_script(data, repository / "generator", *common)

    manifest = kerve_manifest.read_manifest(first)
    assert manifest.task == "generation" and manifest.labels == sorted(
        COLOUR_LABELS
    )  # folder order
    assert manifest.generation.latent_dim == 8
    assert (manifest.input.height, manifest.input.channels) == (12, 3)
    metrics = manifest.metrics
    assert metrics["fid_f"] >= 0 and 0 <= metrics["conditional_accuracy"] <= 1
    assert set(metrics["conditional_accuracy_per_class"]) == set(COLOUR_LABELS)
    assert metrics["judge_accuracy_on_real"] == 1.0  # the judge knows its colours
    assert 0 <= manifest.provenance["final"]["conditional_accuracy"] <= 1  # judged per epoch
    for name in ("discriminator.keras", "samples.png", "samples_epoch000.png",
                 "samples_epoch002.png", "learning_curves.png"):  # fmt: skip
        assert (first / name).exists(), name
    assert list((tmp_path / "cache").glob("gan-reference-*.npz"))

    # Fine-tuning on one class: starts from the published weights, keeps the labels.
    second = run_script(data, repository / "generator", *common, "--init", str(first),
                        "--classes", "blue", "--epochs", "1")  # fmt: skip
    tuned = kerve_manifest.read_manifest(second)
    assert tuned.labels == manifest.labels and tuned.provenance["classes"] == ["blue"]
    assert tuned.provenance["init"] == str(first)
    # Its starting grid is the first run's final one: the same weights, the same latents.
    start = np.asarray(Image.open(second / "samples_epoch000.png"))
    np.testing.assert_array_equal(start, np.asarray(Image.open(first / "samples.png")))

    with start_client(make_settings(repository)) as client:
        wait_ready(client)
        response = client.post(
            "/v1/models/generator/generate", json={"label": "blue", "count": 2, "seed": 9}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == 2 and len(body["images"]) == 2
        image = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["b64"])))
        assert (image.size, image.mode) == ((12, 12), "RGB")


def test_script_refuses_classes_the_generator_does_not_have(tmp_path):
    data = write_colour_folders(tmp_path / "data", per_class=2)
    with pytest.raises(ValueError, match="purple"):
        run_script(data, tmp_path / "models" / "generator", "--classes", "red,purple")
