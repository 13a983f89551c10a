"""TensorFlow Serving's REST API: :predict (row and columnar formats, b64 images) and /metadata."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest

import kerve_manifest
from tests.helpers import (
    IMAGE_SIZE,
    encode,
    make_settings,
    publish_colour_classifier,
    solid,
    start_client,
    wait_ready,
    wait_until,
)
from training import export

X = np.array([[0.5, -1.0, 2.0, 3.0], [1.5, 0.25, -2.0, 0.0], [0.0, 1.0, 1.0, -0.5]], np.float32)
K = np.array([[1, 2], [3, -4], [0, 7]], np.int32)
FEATURES = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [-1.0, 2.0, -3.0, 4.0, -5.0]], np.float32)


def build_pair_model(sorted_names: bool = True) -> keras.Model:
    """Two named inputs, x float32 (4,) and k int32 (2,); two named outputs, sum (3,) and
    scaled (4,). ``sorted_names``: the dicts list their keys in sorted order."""
    x = keras.Input((4,), name="x")
    k = keras.Input((2,), dtype="int32", name="k")
    k_float = keras.layers.Activation("linear", dtype="float32")(k)
    total = keras.layers.Dense(3, name="sum")(keras.layers.Concatenate()([x, k_float]))
    scaled = keras.layers.Multiply(name="scaled")([x, keras.layers.Dense(4)(k_float)])
    inputs, outputs = {"x": x, "k": k}, {"sum": total, "scaled": scaled}
    if sorted_names:
        inputs, outputs = dict(sorted(inputs.items())), dict(sorted(outputs.items()))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(5)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 1, w.shape).astype(np.float32)
                           for w in layer.get_weights()])  # fmt: skip
    return model


def build_single_model() -> keras.Model:
    features = keras.Input((5,), name="features")
    dense = keras.layers.Dense(2, name="score")
    model = keras.Model(features, dense(features))
    dense.set_weights([np.arange(10, dtype=np.float32).reshape(5, 2) / 10, np.ones(2, np.float32)])
    return model


def load(path: Path) -> keras.Model:
    """The published model, as the server loads it."""
    return keras.saving.load_model(path / kerve_manifest.MODEL_FILE)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = {
        "pair": export.publish(build_pair_model(), kerve_manifest.TensorManifest(), root, "pair"),
        "single": export.publish(
            build_single_model(), kerve_manifest.TensorManifest(), root, "single"
        ),
        "colours": publish_colour_classifier(root),
    }
    with start_client(make_settings(root)) as client:
        wait_ready(client)
        yield client, {name: load(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def client(served):
    return served[0]


@pytest.fixture(scope="module")
def models(served):
    return served[1]


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def error(response, status: int) -> str:
    """TF Serving's error body, {"error": message}, with ``status``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return body["error"]


# -- predict on tensor models -----------------------------------------------------------
def test_row_format_named_inputs_and_outputs(client, models):
    instances = [{"x": x.tolist(), "k": k.tolist()} for x, k in zip(X, K, strict=True)]
    response = client.post("/v1/models/pair:predict", json={"instances": instances})
    predictions = ok(response)["predictions"]
    expected = models["pair"].predict({"x": X, "k": K}, verbose=0)
    assert len(predictions) == len(X)
    assert all(set(row) == {"sum", "scaled"} for row in predictions)
    for name in ("sum", "scaled"):
        got = np.array([row[name] for row in predictions])
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-6)


def test_columnar_format_named_inputs_and_outputs(client, models):
    # k as 3.0, 7.0, ...: whole numbers are accepted for an int32 input.
    inputs = {"x": X.tolist(), "k": K.astype(float).tolist()}
    body = {"signature_name": "serving_default", "inputs": inputs}
    outputs = ok(client.post("/v1/models/pair:predict", json=body))["outputs"]
    expected = models["pair"].predict({"x": X, "k": K}, verbose=0)
    assert set(outputs) == {"sum", "scaled"}
    for name in ("sum", "scaled"):
        np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-5, atol=1e-6)


def test_single_input_unnamed_and_named_in_both_formats(client, models):
    expected = models["single"].predict(FEATURES, verbose=0)
    name = models["single"].inputs[0]._keras_history.operation.name
    assert name == "features"
    bodies = {
        "predictions": [
            {"instances": FEATURES.tolist()},
            {"instances": [{"features": row} for row in FEATURES.tolist()]},
        ],
        "outputs": [{"inputs": FEATURES.tolist()}, {"inputs": {"features": FEATURES.tolist()}}],
    }
    for key, requests in bodies.items():
        for body in requests:
            answer = ok(client.post("/v1/models/single:predict", json=body))
            assert list(answer) == [key]
            # One output: its value, not an object naming it.
            np.testing.assert_allclose(answer[key], expected, rtol=1e-5, atol=1e-6)


def test_versions_form_and_non_finite_values(client, models):
    features = FEATURES.copy()
    features[1, 0] = np.nan
    body = json.dumps({"instances": features.tolist()})  # NaN: not strict JSON, as TF Serving takes
    response = client.post("/v1/models/single/versions/1:predict", content=body)
    predictions = ok(response)["predictions"]
    assert b"NaN" in response.content  # TF Serving's JSON carries NaN, as Python's json reads it
    expected = models["single"].predict(FEATURES, verbose=0)
    np.testing.assert_allclose(predictions[0], expected[0], rtol=1e-5)
    assert all(math.isnan(value) for value in predictions[1])
    message = error(client.post("/v1/models/single/versions/2:predict", json={"inputs": []}), 404)
    assert "version 2" in message


# -- b64 images -------------------------------------------------------------------------
def test_b64_png_images_to_the_classifier(client, models):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    images = [noise, solid((20, 30, 220)), solid((200, 40, 10), size=(8, 20))]
    instances = [{"b64": base64.b64encode(encode(image, "PNG")).decode()} for image in images]
    response = client.post("/v1/models/colours:predict", json={"instances": instances})
    predictions = ok(response)["predictions"]
    # "unit" scaling: pixels / 255. A solid image stays solid when resized to 16x16.
    samples = np.stack(
        [noise, *(np.broadcast_to(image[0, 0], noise.shape) for image in images[1:])]
    ).astype(np.float32)
    expected = models["colours"].predict(samples / 255, verbose=0)
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)
    assert np.argmax(predictions, axis=1).tolist() == [int(np.argmax(expected[0])), 2, 0]

    name = models["colours"].inputs[0]._keras_history.operation.name
    columnar = client.post(
        "/v1/models/colours/versions/1:predict", json={"inputs": {name: instances[1:]}}
    )
    np.testing.assert_allclose(ok(columnar)["outputs"], expected[1:], rtol=1e-5, atol=1e-6)


# -- metadata ---------------------------------------------------------------------------
def test_metadata_in_tf_serving_shape(client, models):
    def info(dtype: str, *dims: int, name: str) -> dict:
        shape = {"dim": [{"size": str(d)} for d in (-1, *dims)], "unknown_rank": False}
        return {"dtype": dtype, "tensor_shape": shape, "name": name}

    for url in ("/v1/models/pair/metadata", "/v1/models/pair/versions/1/metadata"):
        assert ok(client.get(url)) == {
            "model_spec": {"name": "pair", "signature_name": "", "version": "1"},
            "metadata": {
                "signature_def": {
                    "signature_def": {
                        "serving_default": {
                            "inputs": {
                                "x": info("DT_FLOAT", 4, name="x"),
                                "k": info("DT_INT32", 2, name="k"),
                            },
                            "outputs": {
                                "sum": info("DT_FLOAT", 3, name="sum"),
                                "scaled": info("DT_FLOAT", 4, name="scaled"),
                            },
                            "method_name": "tensorflow/serving/predict",
                        }
                    }
                }
            },
        }
    signature = ok(client.get("/v1/models/colours/metadata"))["metadata"]["signature_def"][
        "signature_def"
    ]["serving_default"]
    input_name = models["colours"].inputs[0]._keras_history.operation.name
    output_name = models["colours"].output_names[0]
    assert signature["inputs"] == {input_name: info("DT_FLOAT", 16, 16, 3, name=input_name)}
    assert signature["outputs"] == {output_name: info("DT_FLOAT", 3, name=output_name)}
    error(client.get("/v1/models/nobody/metadata"), 404)
    error(client.get("/v1/models/pair/versions/9/metadata"), 404)


# -- errors -----------------------------------------------------------------------------
def test_errors_in_tf_serving_shape_and_serving_goes_on(client, models):
    pair, single = "/v1/models/pair:predict", "/v1/models/single:predict"
    row = {"x": X[0].tolist(), "k": K[0].tolist()}
    png = {"b64": base64.b64encode(encode(solid((1, 2, 3)), "PNG")).decode()}
    assert "nobody" in error(client.post("/v1/models/nobody:predict", json={"instances": [1]}), 404)
    malformed = client.post(
        single, content=b'{"instances": [[1, 2', headers={"Content-Type": "application/json"}
    )
    assert "JSON" in error(malformed, 400)
    assert "instances" in error(client.post(single, json={"signature_name": ""}), 400)
    assert "instances" in error(client.post(single, json={"instances": [], "inputs": []}), 400)
    assert "instances" in error(client.post(single, json={"instances": []}), 400)
    assert "signature" in error(
        client.post(single, json={"signature_name": "x", "inputs": []}), 400
    )
    error(client.post(single, json=[1, 2]), 400)
    # Shapes, names, types.
    assert "shape" in error(client.post(single, json={"instances": [[1.0, 2.0, 3.0]]}), 400)
    assert "shape" in error(client.post(single, json={"inputs": [1, 2, 3, 4, 5]}), 400)
    assert "rectangular" in error(client.post(single, json={"instances": [[1] * 5, [1] * 4]}), 400)
    assert "numbers" in error(client.post(single, json={"instances": [["a"] * 5]}), 400)
    missing = client.post(pair, json={"instances": [{"x": row["x"]}]})
    assert "missing ['k']" in error(missing, 400)
    unknown = client.post(pair, json={"inputs": {"x": [row["x"]], "k": [row["k"]], "z": [[1]]}})
    assert "unknown ['z']" in error(unknown, 400)
    uneven = client.post(pair, json={"instances": [row, {"x": row["x"]}]})
    assert "instance 1" in error(uneven, 400)
    assert "by name" in error(client.post(pair, json={"instances": [row["x"]]}), 400)
    assert "by name" in error(client.post(pair, json={"inputs": [row["x"]]}), 400)
    fraction = client.post(pair, json={"instances": [{**row, "k": [1.5, 2]}]})
    assert "'k'" in error(fraction, 400)
    batches = client.post(pair, json={"inputs": {"x": X.tolist(), "k": K[:1].tolist()}})
    assert "batch size" in error(batches, 400)
    # b64 only where a runtime decodes images.
    assert "b64" in error(client.post(single, json={"instances": [png]}), 400)
    assert "b64" in error(client.post(pair, json={"instances": [{**row, "k": png}]}), 400)
    bad = client.post("/v1/models/colours:predict", json={"instances": [{"b64": "not base64!"}]})
    assert "base64" in error(bad, 400)
    nested = client.post("/v1/models/colours:predict", json={"inputs": [[png]]})
    error(nested, 400)
    not_image = {"b64": base64.b64encode(b"not an image").decode()}
    error(client.post("/v1/models/colours:predict", json={"instances": [not_image]}), 400)
    assert "version" in error(client.post("/v1/models/pair/versions/x:predict", json={}), 400)

    # The server keeps serving, and counts these under the predict task.
    answer = ok(client.post(pair, json={"instances": [row]}))["predictions"]
    expected = models["pair"].predict({"x": X[:1], "k": K[:1]}, verbose=0)
    np.testing.assert_allclose(answer[0]["sum"], expected["sum"][0], rtol=1e-5, atol=1e-6)
    counted = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("kerve_requests_total{")
        and 'route="/v1/models/{name}:predict"' in line
        and 'task="predict"' in line
    ]
    for status in (400, 404, 200):
        assert any(f'status="{status}"' in line for line in counted), (status, counted)


def test_task_and_predict_requests_share_the_model(client, models):
    png = encode(solid((20, 220, 20)), "PNG")
    classified = ok(client.post("/v1/classify", content=png, headers={"Content-Type": "image/png"}))
    b64 = {"b64": base64.b64encode(png).decode()}
    predicted = ok(client.post("/v1/models/colours:predict", json={"instances": [b64]}))
    scores = {p["label"]: p["score"] for p in classified["predictions"][0]}
    np.testing.assert_allclose(
        predicted["predictions"][0], [scores["red"], scores["green"], scores["blue"]], rtol=1e-5
    )


def test_dict_model_with_unsorted_names(tmp_path):
    root = tmp_path / "models"
    model = build_pair_model(sorted_names=False)
    export.publish(model, kerve_manifest.TensorManifest(), root, "pair")
    with start_client(make_settings(root)) as client:
        state = wait_until(lambda: _state(client, "pair") in ("AVAILABLE", "FAILED") and
                           _state(client, "pair"))  # fmt: skip
        assert state == "AVAILABLE", client.get("/v1/models/pair").text
        instances = [{"x": X[0].tolist(), "k": K[0].tolist()}]
        predictions = ok(client.post("/v1/models/pair:predict", json={"instances": instances}))
        expected = model.predict({"x": X[:1], "k": K[:1]}, verbose=0)
        np.testing.assert_allclose(predictions["predictions"][0]["sum"], expected["sum"][0])


def _state(client, name: str) -> str | None:
    response = client.get(f"/v1/models/{name}")
    return response.json()["versions"][0]["state"] if response.status_code == 200 else None
