"""Compiled engines chosen at load: kept where they agree with Keras and are faster, and
otherwise Keras, with the reason in /v1/models, the log and the metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from kerve_backend import keras
from service.batching import BatchConfig
from service.engines import COMPILED, EngineConfig, hardware, onnx_export
from service.engines.onnx_export import exported_onnx
from service.metrics import Metrics
from service.repository import load_runtime
from service.runtimes.captioning import CaptioningRuntime
from service.runtimes.classification import ClassificationRuntime
from service.runtimes.denoising import DenoisingRuntime
from service.runtimes.segmentation import SegmentationRuntime
from tests.helpers import (
    colour_manifest,
    encode,
    make_settings,
    publish_captioner,
    publish_colour_classifier,
    solid,
    start_client,
    wait_ready,
)
from training import export

pytestmark = pytest.mark.skipif(
    not all(engine.installed() for engine in COMPILED.values()),
    reason="the compiled engines are not installed (pip install -e '.[engines]')",
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One engine cache for the module: each tiny model is exported to ONNX once."""
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """The colour classifier's version 1, published once (the same file, the same hash)."""
    return publish_colour_classifier(tmp_path_factory.mktemp("models"))


def load(version_dir: Path, **config):
    return load_runtime(
        version_dir,
        version_dir.parent.name,
        int(version_dir.name),
        batching=lambda manifest: BatchConfig(max_batch_size=8),
        metrics=Metrics().for_model(version_dir.parent.name, 1),
        max_image_pixels=1_000_000,
        engine=EngineConfig(**config),
    )


def outcomes(runtime) -> dict[tuple[str, str], str]:
    return {(t.engine, t.precision): t.outcome for t in runtime.engine_report.trials}


def test_auto_keeps_a_compiled_engine_that_agrees_and_is_faster(colours, cache_dir):
    runtime = load(colours, cache_dir=cache_dir)
    report = runtime.engine_report
    # The fastest of Keras and the agreeing engines serves, by the times measured at load.
    timed = [t for t in report.trials if t.batch_seconds]
    assert min(timed, key=lambda t: t.total_seconds).outcome == "serving"
    assert runtime.engine.name == report.engine
    if keras.backend.backend() == "tensorflow":  # TF's predict_on_batch: ~60x slower here
        assert report.engine in COMPILED
        assert outcomes(runtime)[("keras", "fp32")] == "slower"
    assert "same top-1 on 8/8" in report.reason
    # The batcher weighs batch sizes with the chosen engine's own times.
    serving = next(t for t in report.trials if t.outcome == "serving")
    reported = serving.as_dict()["batch_ms"]  # as /v1/models shows them
    assert runtime.batch_seconds == pytest.approx(
        {int(size): ms / 1000 for size, ms in reported.items()}, abs=1e-5
    )

    red = np.zeros((1, 16, 16, 3), np.float32)
    red[..., 0] = 1.0
    probabilities = runtime.predict_batch(red)
    assert probabilities.argmax() == 0
    expected = keras.saving.load_model(colours / "model.keras").predict_on_batch(red)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    """A classifier whose 768-input dense layer every engine sums in its own order, so
    no engine matches Keras to the last bit (the colour classifier's mean can)."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    hidden = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    return export.publish(model, colour_manifest(), tmp_path_factory.mktemp("models"), "dense")


def test_a_zero_tolerance_falls_back_to_keras_and_says_why(dense, cache_dir):
    runtime = load(dense, cache_dir=cache_dir, tolerance=0.0)
    report = runtime.engine_report
    assert report.engine == "keras" and runtime.engine.name == "keras"
    assert report.reason.startswith("Keras; ")
    assert {t.outcome for t in report.trials if t.engine != "keras"} == {"disagrees"}
    assert "probabilities within" in report.trials[1].detail
    assert not any(t.engines for t in report.trials)  # the candidates were released
    # With the task's own tolerance the same engines agree.
    assert load(dense, cache_dir=cache_dir).engine_report.engine in COMPILED


def test_the_export_is_cached_for_the_next_load(colours, cache_dir, monkeypatch):
    first = load(colours, cache_dir=cache_dir)  # exports, unless a test before did
    assert len(list((cache_dir / "onnx").glob("*/model.onnx"))) >= 1

    def no_export(*args, **kwargs):
        raise AssertionError("the second load exported the model again")

    monkeypatch.setattr("service.engines.onnx_export.subprocess.run", no_export)
    second = load(colours, cache_dir=cache_dir)
    compiled = [t for t in second.engine_report.trials if t.engine != "keras"]
    assert compiled and all(t.cached for t in compiled)
    assert second.engine_report.engine == first.engine_report.engine


def test_without_a_cache_folder_exports_stay_in_one_scratch_folder_of_the_process(dense):
    model_path = dense / "model.keras"
    first, cached = exported_onnx(model_path, "model", None)
    assert not cached
    assert first.is_relative_to(onnx_export._scratch())  # removed when the process exits
    assert exported_onnx(model_path, "model", None) == (first, True)


@keras.saving.register_keras_serializable(package="kerve_tests")
class Doubling(keras.layers.Layer):
    """A layer only this process knows: the exporter's own process cannot load the model."""

    def call(self, inputs):
        return inputs * 2.0


def test_a_model_that_fails_to_export_still_serves_on_keras(tmp_path):
    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(Doubling()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    version_dir = export.publish(model, colour_manifest(), tmp_path / "models", "custom")
    runtime = load(version_dir, cache_dir=tmp_path / "cache")
    report = runtime.engine_report
    assert report.engine == "keras"
    assert {t.outcome for t in report.trials if t.engine != "keras"} == {"failed"}
    assert "Doubling" in report.reason
    assert runtime.predict_batch(np.ones((2, 16, 16, 3), np.float32)).shape == (2, 3)


def test_a_named_engine_that_disagrees_fails_the_load(dense, cache_dir):
    with pytest.raises(ValueError, match="SERVE_ENGINE=onnxruntime cannot serve this model"):
        load(dense, engine="onnxruntime", cache_dir=cache_dir, tolerance=0.0)


def trials(report_trials) -> list[tuple[str, str]]:
    return [(t.engine, t.precision) for t in report_trials]


def tried(engines) -> list[tuple[str, str]]:
    """The trials after Keras's with precision auto: fp32, and bf16 where the CPU has the
    units for it (AVX-512 BF16 or AMX) and the engine computes it."""
    precisions = ["fp32", "bf16"] if hardware.has_bf16() else ["fp32"]
    return [(e, p) for e in engines for p in precisions if p in COMPILED[e].precisions]


def test_a_named_engine_is_kept_whatever_its_speed(colours, cache_dir):
    runtime = load(colours, engine="openvino", cache_dir=cache_dir)
    assert runtime.engine_report.engine == "openvino"
    assert trials(runtime.engine_report.trials) == [("keras", "fp32"), *tried(["openvino"])]


def test_keras_alone_exports_nothing(colours, tmp_path):
    runtime = load(colours, engine="keras", cache_dir=tmp_path)
    assert runtime.engine_report.engine == "keras"
    assert runtime.engine_report.reason == "SERVE_ENGINE=keras"
    assert not (tmp_path / "onnx").exists()


@pytest.mark.skipif(hardware.has_bf16(), reason="this CPU computes bf16")
def test_bf16_without_the_cpu_units_for_it_falls_back(colours, cache_dir):
    runtime = load(colours, precision="bf16", cache_dir=cache_dir)
    assert runtime.engine_report.engine == "keras"
    assert "the CPU has no bf16 units" in runtime.engine_report.reason


@pytest.mark.skipif(not hardware.has_bf16(), reason="this CPU has no bf16 units")
def test_bf16_on_a_cpu_with_the_units_is_reported_as_bf16(colours, cache_dir):
    runtime = load(colours, engine="openvino", precision="bf16", cache_dir=cache_dir)
    assert (runtime.engine_report.engine, runtime.engine_report.precision) == ("openvino", "bf16")
    assert trials(runtime.engine_report.trials) == [("keras", "fp32"), ("openvino", "bf16")]


def test_a_captioner_runs_both_its_parts_on_the_compiled_engine(tmp_path, cache_dir):
    # Named, so kept whatever its speed (JAX runs this tiny decoder as fast as any).
    runtime = load(
        publish_captioner(tmp_path / "models"), engine="onnxruntime", cache_dir=cache_dir
    )
    assert {e.name for e in runtime.engines.values()} == {"onnxruntime"}
    # onnxruntime computes fp32 only: no bf16 trial on a CPU that has bf16 either.
    assert trials(runtime.engine_report.trials) == [("keras", "fp32"), *tried(["onnxruntime"])]
    assert set(runtime.engines) == {"encoder", "decoder"}
    paths = [exported_onnx(runtime.model_path, part, cache_dir) for part in runtime.engines]
    assert all(cached for _, cached in paths)


def test_the_service_reports_the_engine_in_models_and_metrics(colours, cache_dir, tmp_path):
    repository = tmp_path / "models"
    shutil.copytree(colours.parent, repository / "colours")
    settings = make_settings(repository, engine="auto", engine_cache_dir=cache_dir)
    with start_client(settings) as client:
        wait_ready(client)
        listed = client.get("/v1/models").json()["models"][0]["versions"][0]["engine"]
        assert listed["engine"] in COMPILED and listed["backend"] == keras.backend.backend()
        assert "trials" not in listed  # the listing stays short
        detail = client.get("/v1/models/colours/versions/1").json()["engine"]
        assert [(t["engine"], t["precision"]) for t in detail["trials"]] == [
            ("keras", "fp32"), *tried(COMPILED)
        ]  # fmt: skip
        metrics = client.get("/metrics").text
        assert (
            f'kerve_model_engine_info{{backend="{listed["backend"]}",engine="{listed["engine"]}",'
            f'model="colours",precision="{listed["precision"]}",version="1"}} 1.0'
        ) in metrics
        response = client.post(
            "/v1/classify", content=encode(solid((0, 0, 250)), "PNG"),
            headers={"Content-Type": "image/png"},
        )  # fmt: skip
        assert response.json()["predictions"][0][0]["label"] == "blue"


# -- each task's own measure of agreement -------------------------------------------
def bare(runtime_class, manifest=None):
    runtime = runtime_class.__new__(runtime_class)
    runtime.manifest = manifest
    return runtime


def test_classification_agreement_is_top1_and_probabilities():
    runtime = bare(ClassificationRuntime, colour_manifest())
    want = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    assert runtime.agreement(want, want + 0.005, 1.0).agrees
    assert not runtime.agreement(want, want + 0.05, 1.0).agrees  # probabilities moved
    flipped = want[:, [1, 0, 2]]
    verdict = runtime.agreement(want, flipped, 1.0)
    assert not verdict.agrees and "same top-1 on 0/2" in verdict.detail
    tie = np.array([[0.495, 0.505, 0.0]])  # Keras's own top two within the tolerance
    assert runtime.agreement(tie, tie[:, [1, 0, 2]], 1.0).agrees
    assert not runtime.agreement(tie, tie[:, [1, 0, 2]], 0.0).agrees


def test_segmentation_agreement_is_mask_pixels():
    runtime = bare(SegmentationRuntime)
    want = np.zeros((1, 20, 20, 2))
    want[..., 0] = 1
    got = want.copy()
    got[0, 0, 0] = [0, 1]  # 1 pixel in 400 changes class: 99.75% agree
    verdict = runtime.agreement(want, got, 1.0)
    assert verdict.agrees and verdict.detail == "masks agree on 99.750% of pixels"
    assert not runtime.agreement(want, got, 0.0).agrees
    got[0, 0, 1:3] = [0, 1]  # 3 in 400: 99.25%
    assert not runtime.agreement(want, got, 1.0).agrees


def test_denoising_agreement_is_psnr():
    runtime = bare(DenoisingRuntime)
    want = np.full((2, 8, 8, 3), 100, np.uint8)
    off_by_one = want.copy()
    off_by_one[0, :4] += 1  # mean square error 0.25: 54 dB
    assert runtime.agreement(want, off_by_one, 1.0).agrees
    assert not runtime.agreement(want, want + np.uint8(2), 1.0).agrees  # 42 dB


def test_captioning_agreement_counts_identical_captions():
    runtime = bare(CaptioningRuntime)
    dtype = np.dtype([("tokens", np.int32, (1, 4)), ("lengths", np.int32, (1,))])
    want = np.zeros(4, dtype)
    want["tokens"], want["lengths"] = [[[3, 4, 5, 0]]], 3
    got = want.copy()
    got["tokens"][0, 0, 1] = 6  # one caption of four differs
    assert runtime.agreement(want, got, 1.0).agrees
    assert not runtime.agreement(want, got, 0.0).agrees
