from __future__ import annotations

import json

import pydantic
import pytest

import kerve_manifest
from kerve_manifest import (
    CaptioningManifest,
    ClassificationManifest,
    DenoisingManifest,
    GenerationManifest,
    InputSpec,
    UpscalingManifest,
)


def classification(**fields) -> ClassificationManifest:
    return ClassificationManifest(input=InputSpec(height=8, width=8), **fields)


def test_round_trip(tmp_path):
    manifest = classification(labels=["a", "b"], metrics={"accuracy": 0.9})
    kerve_manifest.write_manifest(tmp_path, manifest)
    assert kerve_manifest.read_manifest(tmp_path) == manifest


def test_classifier_needs_labels():
    with pytest.raises(pydantic.ValidationError, match="two labels"):
        classification(labels=["only"])


def test_unknown_fields_and_bad_values_are_refused(tmp_path):
    (tmp_path / kerve_manifest.MANIFEST_FILE).write_text(
        json.dumps({"task": "classification", "input": {"height": 8, "width": 8}, "lables": []})
    )
    with pytest.raises(ValueError, match="invalid manifest.json"):
        kerve_manifest.read_manifest(tmp_path)
    with pytest.raises(pydantic.ValidationError):
        InputSpec(height=8, width=8, std=[0.0])


def test_named_pixel_scalings():
    spec = InputSpec.scaled(4, 4, 3, "symmetric")
    assert (spec.mean, spec.std) == ([127.5], [127.5])
    with pytest.raises(ValueError, match="unknown pixel scaling"):
        InputSpec.scaled(4, 4, 3, "imagenet-ish")


def test_versions_are_positive_integer_folders(tmp_path):
    for name in ("1", "2", "10", "0", "01", ".staging-3-x", "latest", "３"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert kerve_manifest.list_versions(tmp_path) == [1, 2, 10]
    assert kerve_manifest.list_versions(tmp_path / "missing") == []


def captioning(**text) -> CaptioningManifest:
    vocabulary = ["<pad>", "<start>", "<end>", "<unk>", "a", "bag"]
    return CaptioningManifest(
        input=InputSpec(height=8, width=8),
        text=kerve_manifest.TextSpec(vocabulary=text.pop("vocabulary", vocabulary), **text),
    )


def test_captioning_manifest_round_trips_its_vocabulary(tmp_path):
    manifest = captioning(max_length=12)
    kerve_manifest.write_manifest(tmp_path, manifest)
    read = kerve_manifest.read_manifest(tmp_path)
    assert read.text.vocabulary[read.text.index("bag")] == "bag"
    assert read.text.max_length == 12


def test_captioning_needs_its_special_tokens_and_unique_words():
    with pytest.raises(pydantic.ValidationError, match="special tokens"):
        captioning(vocabulary=["<pad>", "<start>", "a"])
    with pytest.raises(pydantic.ValidationError, match="unique"):
        captioning(vocabulary=["<pad>", "<start>", "<end>", "<unk>", "a", "a"])


def test_text_section_only_for_captioning():
    with pytest.raises(pydantic.ValidationError, match="text"):
        CaptioningManifest(input=InputSpec(height=8, width=8))
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        classification(labels=["a", "b"], text=captioning().text)


def test_denoising_manifest_round_trips_its_tiling(tmp_path):
    spec = kerve_manifest.DenoisingSpec(margin=24, sigma_range=(5, 50), sigma_input=True)
    manifest = DenoisingManifest(input=InputSpec.scaled(128, 128), denoising=spec)
    kerve_manifest.write_manifest(tmp_path, manifest)
    assert kerve_manifest.read_manifest(tmp_path).denoising == spec


def test_denoising_section_only_for_denoising_and_margins_leave_a_centre():
    tile = InputSpec.scaled(64, 64)
    with pytest.raises(pydantic.ValidationError, match="denoising"):
        DenoisingManifest(input=tile)
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        classification(labels=["a", "b"], denoising=kerve_manifest.DenoisingSpec())
    with pytest.raises(pydantic.ValidationError, match="no centre"):
        DenoisingManifest(input=tile, denoising=kerve_manifest.DenoisingSpec(margin=32))
    with pytest.raises(pydantic.ValidationError, match="sigma_range"):
        kerve_manifest.DenoisingSpec(sigma_range=(30, 10))


def test_upscaling_manifest_round_trips_its_scale_and_margin(tmp_path):
    spec = kerve_manifest.UpscalingSpec(scale=4, margin=6)
    manifest = UpscalingManifest(input=InputSpec.scaled(48, 64), upscaling=spec)
    kerve_manifest.write_manifest(tmp_path, manifest)
    read = kerve_manifest.read_manifest(tmp_path)
    assert isinstance(read, UpscalingManifest) and read == manifest
    assert (read.upscaling.scale, read.upscaling.margin, read.input.height) == (4, 6, 48)
    assert kerve_manifest.UpscalingSpec(scale=2).margin == 8  # input pixels, by default


def test_upscaling_needs_a_scale_of_2_to_8_and_margins_that_leave_a_centre():
    tile = InputSpec.scaled(32, 64)
    with pytest.raises(pydantic.ValidationError, match="upscaling"):
        UpscalingManifest(input=tile)
    with pytest.raises(pydantic.ValidationError, match="scale"):
        kerve_manifest.UpscalingSpec(margin=4)  # no default scale
    for scale in (0, 1, 9):
        with pytest.raises(pydantic.ValidationError, match="scale"):
            kerve_manifest.UpscalingSpec(scale=scale)
    with pytest.raises(pydantic.ValidationError, match="margin"):
        kerve_manifest.UpscalingSpec(scale=2, margin=-1)
    with pytest.raises(pydantic.ValidationError, match="no centre"):
        UpscalingManifest(input=tile, upscaling=kerve_manifest.UpscalingSpec(scale=2, margin=16))
    UpscalingManifest(input=tile, upscaling=kerve_manifest.UpscalingSpec(scale=2, margin=15))
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        kerve_manifest.UpscalingSpec(scale=2, factor=2)
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        DenoisingManifest(
            input=tile,
            denoising=kerve_manifest.DenoisingSpec(),
            upscaling=kerve_manifest.UpscalingSpec(scale=2),
        )


def generation(**fields) -> GenerationManifest:
    return GenerationManifest(input=InputSpec.scaled(28, 28, 1, "symmetric"), **fields)


def test_generation_manifest_round_trips_its_latent_space(tmp_path):
    spec = kerve_manifest.GenerationSpec(latent_dim=64)
    manifest = generation(labels=["a", "b"], generation=spec)
    kerve_manifest.write_manifest(tmp_path, manifest)
    read = kerve_manifest.read_manifest(tmp_path)
    assert read == manifest and read.generation.latent_dim == 64


def test_generation_needs_its_section_two_labels_and_a_positive_latent_dim():
    spec = kerve_manifest.GenerationSpec(latent_dim=16)
    with pytest.raises(pydantic.ValidationError, match="generation"):
        generation(labels=["a", "b"])
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        classification(labels=["a", "b"], generation=spec)
    with pytest.raises(pydantic.ValidationError, match="two labels"):
        generation(labels=["a"], generation=spec)
    with pytest.raises(pydantic.ValidationError, match="latent_dim"):
        kerve_manifest.GenerationSpec(latent_dim=0)


# A denoiser's manifest.json as the single flat Manifest type of earlier releases wrote it.
FLAT_DENOISER = {
    "schema_version": 1,
    "task": "denoising",
    "input": {"height": 64, "width": 64, "channels": 3, "mean": [0.0], "std": [255.0]},
    "labels": [],
    "output": "probabilities",
    "batching": {"max_batch_size": 8, "max_delay_ms": 5.0, "max_queue": 2048, "timeout_ms": 6e4},
    "text": None,
    "denoising": {"margin": 16, "sigma_range": [0.0, 50.0], "sigma_input": False},
    "generation": None,
    "description": "",
    "metrics": {},
    "provenance": {},
}


def test_flat_manifests_of_earlier_releases_still_load(tmp_path):
    (tmp_path / kerve_manifest.MANIFEST_FILE).write_text(json.dumps(FLAT_DENOISER))
    manifest = kerve_manifest.read_manifest(tmp_path)
    assert isinstance(manifest, DenoisingManifest) and manifest.denoising.margin == 16
    filled = {**FLAT_DENOISER, "labels": ["a", "b"]}  # a real value of another task's field
    (tmp_path / kerve_manifest.MANIFEST_FILE).write_text(json.dumps(filled))
    with pytest.raises(ValueError, match="labels"):
        kerve_manifest.read_manifest(tmp_path)


def test_task_picks_the_manifest_type_and_schema_version_is_checked(tmp_path):
    (tmp_path / kerve_manifest.MANIFEST_FILE).write_text(json.dumps({"task": "tensor"}))
    assert isinstance(kerve_manifest.read_manifest(tmp_path), kerve_manifest.TensorManifest)
    for document, problem in (
        ({"task": "tensor", "schema_version": 2}, "schema_version 2"),
        ({"task": "translation"}, "translation"),
    ):
        (tmp_path / kerve_manifest.MANIFEST_FILE).write_text(json.dumps(document))
        with pytest.raises(ValueError, match=problem):
            kerve_manifest.read_manifest(tmp_path)
