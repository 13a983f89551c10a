"""The generic tensor task: any Keras model, named tensors in and out, batched like every task."""

from __future__ import annotations

import asyncio

import keras
import numpy as np
import pytest

import kerve_manifest
from service.batching import BatchConfig
from service.errors import BadRequest, InferenceFailed
from service.metrics import Metrics
from service.repository import load_runtime
from service.runtimes import RUNTIMES
from service.runtimes.tensor import TensorRuntime
from tests.helpers import (
    build_tensor_model,
    make_settings,
    publish_captioner,
    publish_colour_classifier,
    publish_colour_segmenter,
    publish_denoiser,
    publish_generator,
    publish_tensor_model,
    serving,
    start_client,
    wait_ready,
)
from training import export

pytestmark = pytest.mark.anyio


def load(path, **batching) -> TensorRuntime:
    return load_runtime(
        path,
        path.parent.name,
        int(path.name),
        batching=lambda manifest: BatchConfig(**batching),
        metrics=Metrics().for_model(path.parent.name, int(path.name)),
        max_image_pixels=10**6,
    )


def pair_inputs(rows: int, offset: float = 0.0) -> dict[str, np.ndarray]:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 10 + offset
    k = np.arange(rows * 2, dtype=np.int32).reshape(rows, 2)
    return {"x": x, "k": k}


def test_the_registry_holds_the_tensor_task_and_its_manifest_type():
    assert RUNTIMES["tensor"] is TensorRuntime
    assert kerve_manifest.MANIFEST_TYPES["tensor"] is kerve_manifest.TensorManifest


async def test_named_inputs_and_outputs_of_several_dtypes_come_from_the_model(tmp_path):
    runtime = load(publish_tensor_model(tmp_path), max_batch_size=4)
    specs = {spec.name: (spec.datatype, spec.shape) for spec in runtime.tensor_inputs}
    assert specs == {"x": ("FP32", (4,)), "k": ("INT32", (2,))}
    outputs = {spec.name: (spec.datatype, spec.shape) for spec in runtime.tensor_outputs}
    assert outputs == {"sum": ("FP32", (1,)), "scaled": ("FP32", (4,))}
    assert sorted(runtime.batch_seconds) == [1, 2, 4]  # every padded size warmed up

    inputs = pair_inputs(3)
    answer = await serving(runtime, lambda r: r.infer_tensors(inputs))
    expected = build_tensor_model().predict(inputs, verbose=0)
    np.testing.assert_allclose(answer["sum"], expected["sum"], rtol=1e-6)
    np.testing.assert_allclose(answer["scaled"], expected["scaled"], rtol=1e-6)


async def test_concurrent_requests_share_model_calls(tmp_path):
    runtime = load(publish_tensor_model(tmp_path), max_batch_size=8, max_delay_ms=50)
    calls = []
    predict = runtime.predict_batch
    runtime.predict_batch = lambda samples: calls.append(len(samples)) or predict(samples)

    async def eight_clients(r):
        return await asyncio.gather(*(r.infer_tensors(pair_inputs(1, i)) for i in range(8)))

    answers = await serving(runtime, eight_clients)
    assert len(calls) < 8 and max(calls) > 1  # batched across requests
    for i, answer in enumerate(answers):  # each request got its own rows back
        np.testing.assert_allclose(answer["scaled"], 2 * pair_inputs(1, i)["x"], rtol=1e-6)


async def test_list_and_single_tensor_models_are_served_too(tmp_path):
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    both = keras.Model(
        [a, b], [keras.layers.Add(name="total")([a, b]), keras.layers.Maximum()([a, b])]
    )
    single = keras.Sequential([keras.Input((2, 2)), keras.layers.Flatten(name="flat")])
    manifest = kerve_manifest.TensorManifest()
    paths = [export.publish(m, manifest, tmp_path, n) for m, n in ((both, "both"), (single, "one"))]
    listed, alone = (load(path, max_batch_size=2) for path in paths)
    assert [spec.name for spec in listed.tensor_outputs] == ["total", "maximum"]
    values = {"a": np.ones((2, 3), np.float32), "b": np.full((2, 3), 2.0, np.float32)}
    answer = await serving(listed, lambda r: r.infer_tensors(values))
    np.testing.assert_array_equal(answer["total"], np.full((2, 3), 3.0))
    (name,) = [spec.name for spec in alone.tensor_inputs]
    grid = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    answer = await serving(alone, lambda r: r.infer_tensors({name: grid}))
    np.testing.assert_array_equal(answer["flat"], grid.reshape(2, 4))


@pytest.mark.parametrize(
    ("inputs", "problem"),
    [
        ({"x": np.zeros((1, 4), np.float32)}, "missing \\['k'\\]"),
        ({**pair_inputs(1), "z": np.zeros((1, 1))}, "unknown \\['z'\\]"),
        ({"x": np.zeros((1, 5), np.float32), "k": np.zeros((1, 2), np.int32)}, "shape"),
        ({"x": np.zeros((2, 4), np.float32), "k": np.zeros((1, 2), np.int32)}, "batch size"),
        ({"x": np.zeros((1, 4)), "k": np.full((1, 2), 1.5)}, "not INT32"),
    ],
    ids=["missing", "unknown", "shape", "batch sizes", "fraction for an int"],
)
async def test_bad_tensors_are_refused_before_the_model(tmp_path, inputs, problem):
    runtime = load(publish_tensor_model(tmp_path), max_batch_size=2)
    with pytest.raises(BadRequest, match=problem):
        await serving(runtime, lambda r: r.infer_tensors(inputs))


async def test_a_request_that_breaks_the_model_fails_alone(tmp_path):
    """An index past an embedding's table raises inside the model; its batch-mate is answered."""
    index = keras.Input((1,), dtype="int32", name="index")
    table = keras.layers.Embedding(4, 2, name="vector")
    model = keras.Model(index, keras.layers.Flatten(name="flat")(table(index)))
    path = export.publish(model, kerve_manifest.TensorManifest(), tmp_path, "lookup")
    runtime = load(path, max_batch_size=4, max_delay_ms=100)

    async def good_and_bad(r):
        return await asyncio.gather(
            r.infer_tensors({"index": np.array([[1]], np.int32)}),
            r.infer_tensors({"index": np.array([[400]], np.int32)}),
            return_exceptions=True,
        )

    good, bad = await serving(runtime, good_and_bad)
    np.testing.assert_allclose(good["flat"], model.predict(np.array([[1]]), verbose=0))
    if not isinstance(bad, InferenceFailed):  # some backends clip the index instead
        pytest.skip(f"{keras.backend.backend()} does not raise on an index out of range")


def identity_of(tensor) -> keras.Model:
    return keras.Model(tensor, keras.layers.Identity()(tensor))


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        (lambda: keras.Sequential([keras.Input((None, 3)), keras.layers.Dense(2)]), "fixed"),
        (lambda: identity_of(keras.Input((2,), dtype="string")), "takes numbers"),
    ],
    ids=["dynamic axis", "strings"],
)
def test_models_that_cannot_be_batched_or_sent_are_refused_at_load(tmp_path, model, problem):
    built = model()
    with pytest.raises(ValueError, match=problem):
        TensorRuntime.validate(built, kerve_manifest.TensorManifest())


def test_a_tensor_model_is_listed_with_its_endpoints_and_refuses_task_routes(tmp_path):
    publish_tensor_model(tmp_path)
    publish_colour_classifier(tmp_path)
    with start_client(make_settings(tmp_path)) as client:
        wait_ready(client)
        listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        (version,) = listing["pair"]["versions"]
        assert version["task"] == "tensor" and "task" not in version["endpoints"]
        classifier = listing["colours"]["versions"][0]["endpoints"]
        assert classifier["task"] == "/v1/models/colours/versions/1/classify"
        assert listing["colours"]["endpoints"]["task"] == "/v1/models/colours/classify"
        response = client.post("/v1/models/pair/classify", content=b"x")
        assert response.status_code == 400 and response.json()["error"]["code"] == "wrong_task"


def test_every_task_model_answers_as_tensors_through_both_protocols(tmp_path):
    """Each task's model, as v2 metadata describes it, takes tensors of that description
    (ones: a valid label, beam size and length too) and gives the outputs it describes."""
    for publish in (publish_colour_classifier, publish_colour_segmenter, publish_captioner,
                    publish_denoiser, publish_generator, publish_tensor_model):  # fmt: skip
        publish(tmp_path)
    with start_client(make_settings(tmp_path)) as client:
        wait_ready(client)
        for model in client.get("/v1/models").json()["models"]:
            metadata = client.get(f"/v2/models/{model['name']}").json()
            inputs = [
                {**spec, "shape": [2, *spec["shape"][1:]],
                 "data": [1] * 2 * int(np.prod(spec["shape"][1:]))}
                for spec in metadata["inputs"]
            ]  # fmt: skip
            answer = client.post(f"/v2/models/{model['name']}/infer", json={"inputs": inputs})
            assert answer.status_code == 200, (model["name"], answer.text)
            shapes = {o["name"]: o["shape"] for o in answer.json()["outputs"]}
            assert shapes == {o["name"]: [2, *o["shape"][1:]] for o in metadata["outputs"]}
            instances = {
                "inputs": {i["name"]: np.reshape(i["data"], i["shape"]).tolist() for i in inputs}
            }
            predicted = client.post(f"/v1/models/{model['name']}:predict", json=instances)
            assert predicted.status_code == 200, (model["name"], predicted.text)
