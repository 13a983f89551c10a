"""The segmenter script end to end on a few tiny scenes, then served by the app."""

from __future__ import annotations

import base64
import io

import keras
import numpy as np
import pytest
from PIL import Image

import kerve_manifest
from tests.helpers import encode, make_settings, start_client, wait_ready
from training import backbones, evaluate, segmenter
from training.data import scenes


def test_unet_predicts_every_class_at_full_resolution():
    backbone = backbones.build_backbone("efficientnet_lite0", 64, "none")
    model = segmenter.build_model(backbone, len(scenes.CLASSES), pretrained=False)
    outputs = model.predict_on_batch(np.zeros((2, 64, 64, 3), np.float32))
    assert outputs.shape == (2, 64, 64, len(scenes.CLASSES))
    np.testing.assert_allclose(outputs.sum(axis=-1), 1.0, atol=1e-5)
    skips = {layer.name for layer in model.get_layer("encoder").layers}
    assert set(backbones.feature_layers(backbone)) <= skips


def test_dice_cross_entropy_rewards_the_right_mask():
    masks = np.array([[[0, 1], [2, 2]]])
    right = keras.ops.one_hot(masks, 3) * 0.98 + 0.01
    wrong = keras.ops.one_hot((masks + 1) % 3, 3) * 0.98 + 0.01
    loss = segmenter.dice_cross_entropy(3)
    assert float(loss(masks, right)) < 0.1 < 1.0 < float(loss(masks, wrong))


def test_ignored_pixels_count_in_neither_loss_nor_accuracy():
    masks = np.array([[[0, 1], [2, 255]]])
    right = keras.ops.one_hot(np.minimum(masks, 2), 3) * 0.98 + 0.01
    wrong_there = keras.ops.convert_to_numpy(right).copy()
    wrong_there[0, 1, 1] = [0.01, 0.98, 0.01]  # the ignored pixel says class 1
    loss = segmenter.dice_cross_entropy(3, ignore_index=255)
    assert float(loss(masks, right)) == pytest.approx(float(loss(masks, wrong_there)))
    assert float(loss(masks, right)) < 0.1
    accuracy = segmenter.pixel_accuracy(255)
    assert float(accuracy(masks, wrong_there)) == 1.0
    matrix = segmenter.known_confusion(masks, np.array([[[0, 1], [1, 1]]]), 3, 255)
    assert matrix.sum() == 3 and matrix[2, 1] == 1


def test_iou_report_counts_each_class():
    truth = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    report = evaluate.segmentation_report(
        evaluate.confusion_matrix(truth, predicted, 4), list("abcd")
    )
    assert report["per_class_iou"] == {"a": round(1 / 3, 4), "b": round(2 / 3, 4), "c": 0.5}
    assert report["mean_iou"] == round((1 / 3 + 2 / 3 + 0.5) / 3, 4)  # "d" never appears
    assert report["pixel_accuracy"] == round(4 / 6, 4)


def test_script_trains_publishes_and_the_service_serves_it(tmp_path):
    path = segmenter.main(
        # phase 1 on the frozen ImageNet encoder: its backward pass stops at the decoder,
        # which makes tracing the training step (most of this test's time) ~3x cheaper
        ["--weights", "imagenet", "--image-size", "64", "--train-scenes", "32", "--val-scenes",
         "8", "--test-scenes", "8", "--head-epochs", "1", "--epochs", "0", "--batch-size", "8",
         "--verbose", "0", "--out", str(tmp_path / "models" / "segmenter")]
    )  # fmt: skip
    for artifact in ("learning_curves.png", "test_samples.png", "history.csv"):
        assert (path / artifact).stat().st_size > 0
    manifest = kerve_manifest.read_manifest(path)
    assert manifest.task == "segmentation" and manifest.labels == scenes.CLASSES
    assert 0.0 <= manifest.metrics["test_mean_iou"] <= 1.0
    assert sum(map(sum, manifest.metrics["confusion_matrix"])) == 8 * 64 * 64
    assert manifest.provenance["scenes"] == {"train": 32, "val": 8, "test": 8}

    scene = scenes.SceneGenerator("test", 100, seed=1).scene(0)
    with start_client(make_settings(tmp_path / "models")) as client:
        wait_ready(client)
        response = client.post(
            "/v1/segment", content=encode(scene.image, "PNG"), headers={"Content-Type": "image/png"}
        )
    assert response.status_code == 200, response.text
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["mask"]["b64"]))))
    assert mask.shape == (100, 100) and mask.max() < len(scenes.CLASSES)
