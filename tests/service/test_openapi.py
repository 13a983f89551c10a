"""The OpenAPI document says what the server does: refs resolve, every error is documented
in the shape the server sends it in."""

from __future__ import annotations

import pytest

from tests.helpers import make_settings, start_client


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
