"""The captioner: teacher-forcing data, the step decoder's contract, the script end to end."""

from __future__ import annotations

import argparse

import keras
import numpy as np
import pytest

import kerve_manifest
from tests.helpers import encode, make_settings, start_client, wait_ready
from training import backbones, captioner
from training.data import captions, scenes

TEXT = kerve_manifest.TextSpec(vocabulary=captions.vocabulary(["a bag on grass"]), max_length=4)


def tiny_args(decoder: str) -> argparse.Namespace:
    return captioner.parse_args(
        ["--decoder", decoder, "--units", "8", "--embedding-dim", "4", "--context-dim", "6",
         "--max-length", "5", "--dropout", "0.5"]
    )  # fmt: skip


def test_encode_captions_shifts_by_one_and_pads():
    inputs, targets = captioner.encode_captions(["a bag on grass", "a cat"], TEXT)
    word = {token: index for index, token in enumerate(TEXT.vocabulary)}
    start, end, pad, unknown = (word[t] for t in ("<start>", "<end>", "<pad>", "<unk>"))
    assert inputs[0].tolist() == [start, word["a"], word["bag"], word["on"], word["grass"]]
    assert targets[0].tolist() == [word["a"], word["bag"], word["on"], word["grass"], end]
    # an unseen word becomes <unk>; padding after the end is what the loss ignores
    assert inputs[1].tolist() == [start, word["a"], unknown, pad, pad]
    assert targets[1].tolist() == [word["a"], unknown, end, pad, pad]


@pytest.mark.parametrize("decoder", ["lstm", "gru"])
def test_step_decoder_reproduces_the_teacher_forced_model(decoder):
    keras.utils.set_random_seed(0)
    args = tiny_args(decoder)
    backbone = backbones.build_backbone("efficientnet_lite0", 32, "none")
    models = captioner.build_models(backbone, 11, args, pretrained=False)
    num_states = 2 if decoder == "lstm" else 1
    assert len(models.encoder.outputs) == 1 + num_states
    assert len(models.decoder.inputs) == 1 + len(models.encoder.outputs)
    assert models.serving.get_layer("encoder") is models.encoder
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    tokens = np.random.default_rng(1).integers(0, 11, size=(3, args.max_length + 1))
    logits = models.on_images.predict_on_batch([images, tokens])
    expected = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    context, *states = models.encoder.predict_on_batch(images)
    for step in range(tokens.shape[1]):
        token = tokens[:, step : step + 1].astype(np.int32)
        log_probs, *states = models.decoder.predict_on_batch([token, context, *states])
        np.testing.assert_allclose(log_probs, expected[:, step], atol=1e-4)


def test_caption_report_scores_perfect_and_wrong_captions():
    facts = captions.Facts(counts=(("bag", 1), ("sneaker", 2)), background="grass", relation=None)
    data = captioner.CaptionedScenes(
        np.zeros((1, 8, 8, 3), np.uint8),
        [["a bag and two sneakers on grass", "a handbag and two trainers on the grass"]],
        [facts],
    )
    perfect = captioner.caption_report(["a handbag and two trainers on the grass"], data)
    assert perfect["bleu_4"] == pytest.approx(1.0)
    assert perfect["fact_accuracy"] == perfect["all_facts_accuracy"] == 1.0
    wrong = captioner.caption_report(["a bag and three sneakers on grass"], data)
    assert wrong["fact_accuracy"] == 0.0 and wrong["background_accuracy"] == 1.0
    assert 0.0 < wrong["bleu_4"] < 1.0


@pytest.mark.parametrize("decoder", ["gru"])
def test_script_trains_publishes_and_the_service_serves_it(tmp_path, decoder):
    path = captioner.main(
        ["--decoder", decoder, "--weights", "none", "--image-size", "32", "--train-scenes", "24",
         "--val-scenes", "8", "--test-scenes", "8", "--head-epochs", "1", "--epochs", "0",
         "--units", "8", "--embedding-dim", "4", "--context-dim", "8", "--max-length", "30",
         "--batch-size", "32", "--verbose", "0", "--out", str(tmp_path / "models" / "captioner")]
    )  # fmt: skip
    manifest = kerve_manifest.read_manifest(path)
    assert manifest.task == "captioning"
    assert manifest.text.vocabulary[:4] == list(captions.SPECIAL_TOKENS)
    assert {"test_bleu_4", "test_fact_accuracy", "val_bleu_4"} <= manifest.metrics.keys()
    assert manifest.provenance["decoder"] == decoder
    model = keras.saving.load_model(path / kerve_manifest.MODEL_FILE, safe_mode=True)
    assert model.get_layer("decoder").outputs[0].shape == (None, len(manifest.text.vocabulary))
    for artifact in ("learning_curves.png", "test_samples.png", "history.csv"):
        assert (path / artifact).stat().st_size > 0

    scene = scenes.SceneGenerator("test", 50, seed=1).scene(0)
    with start_client(make_settings(tmp_path / "models")) as client:
        wait_ready(client)
        response = client.post(
            "/v1/caption?beam_size=3&max_length=6",
            content=encode(scene.image, "PNG"),
            headers={"Content-Type": "image/png"},
        )
    assert response.status_code == 200, response.text
    (caption,) = response.json()["captions"]
    words = caption["caption"].split()
    assert len(words) <= 6 and set(words) <= set(manifest.text.vocabulary[4:])
