"""The Open Inference Protocol v2 (REST), spoken by Triton's own client to a live server."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import http.client
import json
import struct
import threading

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from service.imaging import load_sample
from service.settings import BatchingOverride
from tests.helpers import (
    IMAGE_SIZE,
    build_colour_classifier,
    build_tensor_model,
    colour_manifest,
    encode,
    histogram_sum_count,
    live_server,
    make_settings,
    publish_colour_classifier,
    publish_tensor_model,
)

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2") / "models"
    publish_tensor_model(root, "pair")
    publish_colour_classifier(root, "colours")
    # Long enough for the concurrent requests to meet in the batcher.
    settings = make_settings(
        root, poll_interval_s=0, model_batching={"pair": BatchingOverride(max_delay_ms=50)}
    )
    with live_server(settings) as address:
        yield address.removeprefix("http://")  # tritonclient takes host:port


@pytest.fixture
def client(url):
    with contextlib.closing(triton.InferenceServerClient(url)) as made:
        yield made


def tensor_inputs(xs: np.ndarray, ks: np.ndarray, binary: bool) -> list[triton.InferInput]:
    x = triton.InferInput("x", list(xs.shape), "FP32").set_data_from_numpy(xs, binary)
    k = triton.InferInput("k", list(ks.shape), "INT32").set_data_from_numpy(ks, binary)
    return [x, k]


def pair_batch(size: int) -> tuple[np.ndarray, np.ndarray]:
    xs = RNG.normal(size=(size, 4)).astype(np.float32)
    return xs, RNG.integers(-50, 50, size=(size, 2), dtype=np.int32)


def random_images(count: int) -> np.ndarray:
    return RNG.integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def requested(names: list[str], binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


def by_name(tensors: list[dict]) -> dict[str, dict]:
    return {t["name"]: {k: v for k, v in t.items() if k != "name"} for t in tensors}


# -- health and metadata -----------------------------------------------------------


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "kerve" and metadata["version"] == "0.1.0"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_ready_by_name_and_version(client):
    assert client.is_model_ready("pair")
    assert client.is_model_ready("pair", "1")
    assert client.is_model_ready("colours")
    assert not client.is_model_ready("missing")
    assert not client.is_model_ready("pair", "7")


def test_model_ready_errors_are_protocol_errors(url):
    response = httpx.get(f"http://{url}/v2/models/missing/ready")
    assert response.status_code == 404
    assert response.json() == {"error": "there is no model named 'missing'"}


def test_tensor_model_metadata(client):
    metadata = client.get_model_metadata("pair")
    assert metadata["name"] == "pair" and metadata["versions"] == ["1"]
    assert metadata["platform"] == "keras"
    assert by_name(metadata["inputs"]) == {
        "x": {"datatype": "FP32", "shape": [-1, 4]},
        "k": {"datatype": "INT32", "shape": [-1, 2]},
    }
    assert by_name(metadata["outputs"]) == {
        "sum": {"datatype": "FP32", "shape": [-1, 1]},
        "scaled": {"datatype": "FP32", "shape": [-1, 4]},
    }
    assert client.get_model_metadata("pair", "1") == metadata


def test_classifier_metadata(client):
    metadata = client.get_model_metadata("colours")
    (image,) = metadata["inputs"]
    assert image["datatype"] == "FP32" and image["shape"] == [-1, IMAGE_SIZE, IMAGE_SIZE, 3]
    assert "BYTES" in image["parameters"]["encoded_images"]
    assert metadata["outputs"] == [{"name": "colour", "datatype": "FP32", "shape": [-1, 3]}]


# -- inference ---------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_two_input_tensor_model(client, binary):
    xs, ks = pair_batch(3)
    outputs = requested(["sum", "scaled"], binary) if not binary else None
    result = client.infer("pair", tensor_inputs(xs, ks, binary), outputs=outputs)
    expected = build_tensor_model().predict({"x": xs, "k": ks}, verbose=0)
    np.testing.assert_allclose(result.as_numpy("sum"), expected["sum"], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("scaled"), expected["scaled"], rtol=1e-6)
    response = result.get_response()
    assert response["model_name"] == "pair" and response["model_version"] == "1"
    has_binary = [("parameters" in output) for output in response["outputs"]]
    assert has_binary == [binary, binary]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_classifier_with_preprocessed_images(client, binary):
    (spec,) = client.get_model_metadata("colours")["inputs"]
    images = (random_images(4) / 255).astype(np.float32)
    image_input = triton.InferInput(spec["name"], list(images.shape), "FP32")
    image_input.set_data_from_numpy(images, binary_data=binary)
    result = client.infer("colours", [image_input], outputs=requested(["colour"], binary))
    expected = build_colour_classifier().predict(images, verbose=0)
    np.testing.assert_allclose(result.as_numpy("colour"), expected, rtol=1e-5, atol=1e-7)


def test_infer_classifier_with_png_files_as_bytes(client):
    (spec,) = client.get_model_metadata("colours")["inputs"]
    pngs = np.array([encode(image, "PNG") for image in random_images(3)], dtype=object)
    png_input = triton.InferInput(spec["name"], [len(pngs)], "BYTES").set_data_from_numpy(pngs)
    result = client.infer("colours", [png_input])
    decoded = np.stack([load_sample(png, colour_manifest().input, 10**6) for png in pngs])
    expected = build_colour_classifier().predict(decoded, verbose=0)
    np.testing.assert_allclose(result.as_numpy("colour"), expected, rtol=1e-5, atol=1e-7)
    assert result.as_numpy("colour").shape == (3, 3)


def test_output_selection_request_id_and_version_path(client):
    xs, ks = pair_batch(2)
    result = client.infer(
        "pair",
        tensor_inputs(xs, ks, binary=True),
        model_version="1",
        outputs=requested(["scaled"], binary=False),
        request_id="request-42",
    )
    response = result.get_response()
    assert response["id"] == "request-42" and response["model_version"] == "1"
    assert [output["name"] for output in response["outputs"]] == ["scaled"]
    assert result.as_numpy("sum") is None
    np.testing.assert_allclose(result.as_numpy("scaled"), 2 * xs, rtol=1e-6)


def test_json_request_with_nested_data_gets_plain_json(url):
    body = {
        "id": "nested",
        "inputs": [
            {
                "name": "x",
                "shape": [2, 4],
                "datatype": "FP32",
                "data": [[1, 2, 3, 4], [0, 0, 0, 1]],
            },
            {"name": "k", "shape": [2, 2], "datatype": "INT32", "data": [10, 20, 1, 1]},
        ],
        "outputs": [{"name": "sum"}],
    }
    response = httpx.post(f"http://{url}/v2/models/pair/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "model_name": "pair",
        "model_version": "1",
        "id": "nested",
        "outputs": [{"name": "sum", "datatype": "FP32", "shape": [2, 1], "data": [40.0, 3.0]}],
    }


def test_binary_response_layout(url):
    """binary_data_output: the JSON header, then each output's little-endian bytes."""
    xs, ks = pair_batch(1)
    header = json.dumps(
        {
            "parameters": {"binary_data_output": True},
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": xs.tolist()},
                {
                    "name": "k",
                    "shape": [1, 2],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 8},
                },
            ],
        }
    ).encode()
    body = header + ks.astype("<i4").tobytes()
    response = httpx.post(
        f"http://{url}/v2/models/pair/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    outputs = json.loads(response.content[:length])["outputs"]
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in outputs}
    assert sizes == {"sum": 4, "scaled": 16}
    chunks, offset = {}, length
    for output in outputs:  # in the header's order
        chunks[output["name"]] = response.content[offset : offset + sizes[output["name"]]]
        offset += sizes[output["name"]]
    assert offset == len(response.content)
    assert struct.unpack("<f", chunks["sum"])[0] == pytest.approx(xs.sum() + ks.sum(), rel=1e-5)
    np.testing.assert_allclose(np.frombuffer(chunks["scaled"], "<f4"), 2 * xs[0], rtol=1e-6)


def test_concurrent_requests_share_model_calls(url):
    """32 clients, each in its own thread (a gevent client's async_infer sends one at a
    time when the server shares its process), released at once by a barrier."""
    batches = [pair_batch(1) for _ in range(32)]
    barrier = threading.Barrier(len(batches))

    def infer_one(batch: tuple[np.ndarray, np.ndarray]) -> triton.InferResult:
        with contextlib.closing(triton.InferenceServerClient(url)) as own_client:
            inputs = tensor_inputs(*batch, binary=True)
            barrier.wait(timeout=30)
            return own_client.infer("pair", inputs)

    def batch_sizes() -> tuple[float, float]:
        metrics = httpx.get(f"http://{url}/metrics").text
        return histogram_sum_count(metrics, "kerve_batch_size", "pair")

    before = batch_sizes()
    with concurrent.futures.ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(infer_one, batches))
    for (xs, _), result in zip(batches, results, strict=True):
        np.testing.assert_allclose(result.as_numpy("scaled"), 2 * xs, rtol=1e-6)
    samples, calls = (after - earlier for after, earlier in zip(batch_sizes(), before, strict=True))
    assert samples == 32
    assert samples / calls > 1, f"{calls:.0f} model calls for {samples:.0f} samples"
    metrics = httpx.get(f"http://{url}/metrics").text
    assert 'route="/v2/models/{name}/infer",status="200",task="infer"' in metrics


# -- bad requests --------------------------------------------------------------------

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
K = {"name": "k", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}
BAD_REQUESTS = {
    "wrong shape": {"inputs": [{**X, "shape": [2, 2]}, K]},
    "wrong datatype": {"inputs": [X, {**K, "datatype": "FP32"}]},
    "unknown datatype": {"inputs": [{**X, "datatype": "FP8"}, K]},
    "data length": {"inputs": [{**X, "data": [1, 2, 3]}, K]},
    "ragged data": {"inputs": [{**X, "shape": [2, 2], "data": [[1, 2], [3]]}, K]},
    "not integers": {"inputs": [X, {**K, "data": [1.5, 2]}]},
    "missing input": {"inputs": [X]},
    "unknown input": {"inputs": [X, K, {**K, "name": "z"}]},
    "unknown output": {"inputs": [X, K], "outputs": [{"name": "nope"}]},
    "no inputs": {"outputs": []},
    "binary size": ({"inputs": [{**X, "data": None, "parameters": {"binary_data_size": 12}}, K]},
                    b"\0" * 12),
    "binary past end": ({"inputs": [X, {**K, "data": None, "parameters": {"binary_data_size": 8}}]},
                        b"\0" * 4),
    "binary left over": ({"inputs": [X, K]}, b"\0" * 4),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_tensors_get_400_with_protocol_error(url, case):
    request = BAD_REQUESTS[case]
    header, binary = request if isinstance(request, tuple) else (request, b"")
    header_bytes = json.dumps(header).encode()
    response = httpx.post(
        f"http://{url}/v2/models/pair/infer",
        content=header_bytes + binary,
        headers={"Inference-Header-Content-Length": str(len(header_bytes))},
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    good = httpx.post(f"http://{url}/v2/models/pair/infer", json={"inputs": [X, K]})
    assert good.status_code == 200, good.text
    assert by_name(good.json()["outputs"])["sum"]["data"] == [13.0]


def test_not_json_and_unknown_version(url):
    response = httpx.post(f"http://{url}/v2/models/pair/infer", content=b"{not json")
    assert response.status_code == 400 and list(response.json()) == ["error"]
    response = httpx.post(f"http://{url}/v2/models/pair/versions/9/infer", json={"inputs": []})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'pair' has no version 9 loaded"}


def test_dict_names_out_of_sorted_order_keep_their_tensors():
    from service.runtimes.tensor import model_tensors, named_inputs, named_outputs

    model = build_tensor_model(sorted_names=False)
    inputs = model_tensors(named_inputs(model))
    outputs = model_tensors(named_outputs(model))
    assert {spec.name: spec.shape for spec in inputs} == {"x": (4,), "k": (2,)}
    assert {spec.name: spec.shape for spec in outputs} == {"sum": (1,), "scaled": (4,)}


def declare_a_huge_body(url: str, path: str) -> tuple[int, bytes]:
    """POST that declares a terabyte and sends none of it (httpx refuses to)."""
    connection = http.client.HTTPConnection(*url.split(":"), timeout=10)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Length", str(10**12))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_limits_answer_in_the_protocols_error_shape(url):
    """Bodies and image counts over the server's limits, odd base64 and a header length of
    5,000 digits: each a 4xx in the protocol's shape, never a 500."""
    base = f"http://{url}"
    for path in ("/v2/models/colours/infer", "/v1/models/colours:predict"):
        status, body = declare_a_huge_body(url, path)
        assert status == 413 and isinstance(json.loads(body)["error"], str), body
    images = [base64.b64encode(b"not decoded").decode()] * 65  # the settings allow 64
    name = httpx.get(f"{base}/v2/models/colours").json()["inputs"][0]["name"]
    many = {"name": name, "shape": [65], "datatype": "BYTES", "data": images,
            "parameters": {"content_type": "base64"}}  # fmt: skip
    response = httpx.post(f"{base}/v2/models/colours/infer", json={"inputs": [many]})
    assert response.status_code == 413, response.text
    odd = {**many, "shape": [1], "data": ["é"]}
    response = httpx.post(f"{base}/v2/models/colours/infer", json={"inputs": [odd]})
    assert response.status_code == 400 and "base64" in response.json()["error"]
    response = httpx.post(
        f"{base}/v2/models/pair/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "9" * 5000},
    )
    assert response.status_code == 400 and list(response.json()) == ["error"]
    response = httpx.get(f"{base}/v2/models/pair/versions/{'9' * 5000}")
    assert response.status_code == 400
