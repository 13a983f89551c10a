"""The OpenAPI document says what the server does: refs resolve, every error is documented
in the shape the server sends it in."""

from __future__ import annotations

import base64
import json

import jsonschema
import pytest

from service.errors import BadRequest
from service.routes.params import parse_version
from service.runtimes.generation import MAX_COUNT, MAX_SEED
from tests.helpers import encode, make_settings, solid, start_client


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    with start_client(make_settings(tmp_path_factory.mktemp("empty"))) as client:
        return client.get("/openapi.json").json()


def refs(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


def test_every_ref_resolves_within_the_document(spec):
    found = refs(spec)
    assert "#/components/schemas/Base64Image" in found  # the image routes' JSON body
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in spec["components"]["schemas"], ref
    assert "$defs" not in str(spec)


def error_schema(operation: dict, status: int) -> str:
    content = operation["responses"][str(status)]["content"]["application/json"]
    return content["schema"]["$ref"].rsplit("/", 1)[1]


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/classify", "Error"),
        ("/v1/models/{name}/versions/{version}/generate", "Error"),
        ("/v2/models/{name}/infer", "ProtocolError"),
        ("/v1/models/{name}:predict", "ProtocolError"),
    ],
)
def test_routes_that_run_a_model_document_every_error_they_send(spec, path, shape):
    operation = spec["paths"][path]["post"]
    for status in (400, 404, 413, 415, 422, 500, 503, 504):
        assert error_schema(operation, status) == shape, (path, status)
    assert spec["components"]["schemas"]["Error"]["properties"]["error"]["$ref"].endswith(
        "/ErrorDetail"
    )
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's 422 shape


def test_model_routes_document_not_found_and_health_documents_not_ready(spec):
    assert error_schema(spec["paths"]["/v1/models/{name}"]["get"], 404) == "Error"
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    assert set(spec["paths"]["/healthz"]["get"]["responses"]) == {"200", "500"}


# What schemathesis (tests/schema/run_schemathesis.py, `make test`) found the document and
# the server disagreeing on, each fixed on one side or the other.


def body_validator(spec: dict, path: str, media_type: str = "application/json"):
    """A JSON Schema validator for a POST operation's body, its refs resolving in ``spec``."""
    schema = spec["paths"][path]["post"]["requestBody"]["content"][media_type]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


def test_version_parameters_are_documented_as_the_routes_read_them(spec):
    """A version is a positive integer of at most 18 digits (parse_version), not any string:
    schemathesis sent "0", "null" and "1:predict", which the server refuses."""
    documented = [
        (path, parameter)
        for path, item in spec["paths"].items()
        for operation in item.values()
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "version"
    ]
    assert len({path for path, _ in documented}) >= 15
    samples = ["1", "7", "007", "123456789012345678", "0", "00", "-1", "1.0", "abc", "null",
               "1:predict", "1234567890123456789", "\u0661", "1 "]  # fmt: skip
    for path, parameter in documented:
        validator = jsonschema.Draft202012Validator(parameter["schema"])
        for text in samples:
            try:
                accepted = parse_version(text) is not None
            except BadRequest:
                accepted = False
            assert validator.is_valid(text) == accepted, (path, parameter["in"], text)
        assert validator.is_valid("") == (parameter["in"] == "query"), path  # "": the newest


def test_image_json_bodies_say_that_they_need_an_image(spec, client):
    """{"image": null, "images": null} fitted the old schema; the server answers it 400."""
    validator = body_validator(spec, "/v1/models/{name}/classify")
    image = {"b64": base64.b64encode(encode(solid((200, 0, 0)), "PNG")).decode()}
    for body in ({}, {"image": None, "images": None}, {"images": []}, {"image": None}):
        assert not validator.is_valid(body), body
        response = client.post("/v1/models/colours/classify", json=body)
        assert response.status_code == 400, (body, response.text)
    for body in ({"image": image}, {"images": [image]}, {"image": None, "images": [image]}):
        assert validator.is_valid(body), body
        assert client.post("/v1/models/colours/classify", json=body).status_code == 200, body


def test_predict_bodies_say_instances_or_inputs(spec, client):
    validator = body_validator(spec, "/v1/models/{name}:predict")
    row = [[[0.0] * 3] * 16] * 16  # one 16x16 RGB image, as the classifier takes it
    for body in ({}, {"instances": []}, {"instances": [row], "inputs": [row]},
                 {"signature_name": "other", "instances": [row]}):  # fmt: skip
        assert not validator.is_valid(body), body
        assert client.post("/v1/models/colours:predict", json=body).status_code == 400, body
    for body in ({"instances": [row]}, {"inputs": [row], "signature_name": ""}):
        assert validator.is_valid(body), body
        assert client.post("/v1/models/colours:predict", json=body).status_code == 200, body


def test_v2_inference_documents_its_body(spec):
    """It had no request body at all: schemathesis sent none, and got a 400."""
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        operation = spec["paths"][path]["post"]
        assert operation["requestBody"]["required"] is True
        content = operation["requestBody"]["content"]
        assert set(content) == {"application/json", "application/octet-stream"}
        assert "inputs" in content["application/json"]["schema"]["required"]
        headers = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
        assert headers == ["Inference-Header-Content-Length"]
    validator = body_validator(spec, "/v2/models/{name}/infer")
    assert validator.is_valid({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]})
    assert not validator.is_valid({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32"}]})


def test_bounds_are_json_schema_and_exact_as_doubles(spec):
    """The seed's bounds were documented as pydantic's "ge"/"le", which JSON Schema ignores,
    and 2**63 - 65 is not a double: a validator reading numbers as doubles took 2**63 + 191
    for it. Seeds now end below 2**53, where every integer is one."""
    text = json.dumps(spec)
    for keyword in ("ge", "le", "gt", "lt"):
        assert f'"{keyword}":' not in text, keyword
    seed = spec["components"]["schemas"]["GenerateRequest"]["properties"]["seed"]["anyOf"][0]
    assert (seed["minimum"], seed["maximum"]) == (0, MAX_SEED)
    assert MAX_SEED + MAX_COUNT < 2**53 and float(MAX_SEED + 1) != float(MAX_SEED)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/models/colours:predict", "POST"),
        ("GET", "/v1/models/colours:predict", "POST"),  # was model "colours:predict", 404
        ("OPTIONS", "/v1/models/colours/versions/1:predict", "POST"),
        ("GET", "/v1/models/colours/versions/1:predict", "POST"),  # was version "1:predict", 400
        ("POST", "/v1/models/colours", "GET"),
        ("PUT", "/v1/models/colours/versions/1", "GET"),
        ("DELETE", "/v1/classify", "POST"),
    ],
)
def test_a_405_allows_the_methods_of_the_route_the_path_names(client, method, path, allow):
    """TF Serving's ``:predict`` paths match /v1/models/{name}[/versions/{version}] too: the
    405 named GET, the first route's method, instead of POST (schemathesis' Allow check)."""
    response = client.request(method, path)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"
