"""Optional API keys (service/auth.py): off by default; when on, every route but the
probes and the page's and docs' static files needs a valid key."""

from __future__ import annotations

import logging
import re
import shutil

import pytest

import kerve_cli
import kerve_manifest
from service import auth, logs
from service.app import create_app
from tests.helpers import (
    encode,
    live_server,
    make_settings,
    metric_total,
    solid,
    start_client,
    wait_ready,
    wait_until,
)

KEY = "test-key-5bN2qLr8VzT4wYx1"
OTHER_KEY = "other-key-Hp3sK9dQ"
WRONG_KEY = "wrong-key-Jq7mC2xR"
CHALLENGE = 'Bearer realm="kerve"'
OPEN = ("/healthz", "/readyz", "/", "/ui/app.js", "/ui/style.css", "/docs", "/openapi.json",
        "/static/swagger-ui/swagger-ui.css")  # fmt: skip
CLOSED = ("/v1/models", "/v1/models/colours", "/v1/models/colours/versions/1", "/v2",
          "/v2/health/ready", "/v2/models/colours", "/v1/models/colours/metadata",
          "/metrics", "/no-such-route")  # fmt: skip


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(repository):
    """A client of a server whose only key is KEY."""
    with start_client(make_settings(repository, api_keys=KEY)) as client:
        wait_ready(client)
        yield client


def classify(client, headers: dict[str, str] | None = None):
    image = encode(solid((200, 0, 0)), "PNG")
    headers = {"Content-Type": "image/png", **(headers or {})}
    return client.post("/v1/classify", content=image, headers=headers)


def test_keys_are_off_by_default(client):
    assert not client.app.state.api_keys
    assert client.get("/v1/models").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert classify(client).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json()["components"]


def test_no_key_is_a_401_with_a_challenge_a_request_id_and_a_count(keyed):
    for path in CLOSED:
        refused = keyed.get(path)
        assert refused.status_code == 401, path
        assert refused.headers["WWW-Authenticate"] == CHALLENGE
        assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["X-Request-ID"])
    refused = classify(keyed)
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert error["code"] == "unauthorized"
    assert "needs an API key" in error["message"] and "X-API-Key" in error["message"]
    # The request context runs outside the check: the 401s were counted.
    metrics = keyed.get("/metrics", headers=bearer(KEY)).text
    assert metric_total(metrics, "kerve_requests_total", status="401") == len(CLOSED) + 1


def test_a_wrong_key_is_refused(keyed):
    for headers in (bearer(WRONG_KEY), {"X-API-Key": WRONG_KEY}, bearer(KEY[:-1]),
                    bearer(KEY + "x"), {"Authorization": f"Basic {KEY}"}):  # fmt: skip
        refused = keyed.get("/v1/models", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"] == CHALLENGE
    message = keyed.get("/v1/models", headers=bearer(WRONG_KEY)).json()["error"]["message"]
    assert "not valid" in message and WRONG_KEY not in message


def test_either_header_carries_the_key(keyed):
    for headers in (bearer(KEY), {"authorization": f"bearer  {KEY} "}, {"X-API-Key": KEY}):
        assert keyed.get("/v1/models", headers=headers).status_code == 200, headers
        assert classify(keyed, headers).status_code == 200, headers
    # A wrong key in one header does not spoil the right one in the other.
    both = {**bearer(WRONG_KEY), "X-API-Key": KEY}
    assert keyed.get("/v1/models", headers=both).status_code == 200


def test_the_probes_the_page_and_the_docs_need_no_key(keyed):
    for path in OPEN:
        assert keyed.get(path).status_code == 200, path
        assert keyed.get(path, headers=bearer(WRONG_KEY)).status_code == 200, path


def test_metrics_need_a_key_unless_told_otherwise(repository):
    settings = make_settings(repository, api_keys=KEY, metrics_need_key=False)
    with start_client(settings) as client:
        wait_ready(client)
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/models").status_code == 401


def test_protocol_routes_answer_401_in_the_protocols_shape(keyed):
    infer = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}]}
    for path in ("/v2/models/colours/infer", "/v1/models/colours:predict"):
        refused = keyed.post(path, json=infer)
        assert refused.status_code == 401, path
        assert refused.headers["WWW-Authenticate"] == CHALLENGE
        assert isinstance(refused.json()["error"], str), refused.json()
        assert "API key" in refused.json()["error"]
    assert keyed.get("/v2/models/colours", headers=bearer(KEY)).status_code == 200


def test_hashed_and_plain_keys_from_the_file_and_the_variable(repository, tmp_path):
    keys_file = tmp_path / "api-keys.txt"
    keys_file.write_text(
        f"# the client's key, hashed\n{auth.hashed_line(KEY).upper().replace('SHA256', 'sha256')}"
        f"\n\n   # a plain one\n  {OTHER_KEY}  \n"
    )
    assert KEY not in keys_file.read_text()
    settings = make_settings(repository, api_keys=" ,third-key,", api_keys_file=keys_file)
    with start_client(settings) as client:
        wait_ready(client)
        assert len(client.app.state.api_keys) == 3
        for key in (KEY, OTHER_KEY, "third-key"):
            assert client.get("/v1/models", headers={"X-API-Key": key}).status_code == 200, key
        hashed = auth.hashed_line(KEY)  # the hash is not itself a key
        for key in (hashed, hashed.removeprefix("sha256:"), WRONG_KEY, "# a plain one"):
            assert client.get("/v1/models", headers={"X-API-Key": key}).status_code == 401, key


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("sha256:abc123", "64 hex digits"),
        ("sha256:" + "g" * 64, "64 hex digits"),
        ("two words", "no spaces"),
        ("clé-secrète", "printable ASCII"),
    ],
)
def test_a_key_that_cannot_be_used_stops_the_start(repository, tmp_path, entry, reason):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# fine\n{entry}\n")
    with pytest.raises(auth.KeysConfigError, match=reason) as raised:
        create_app(make_settings(repository, api_keys_file=keys_file))
    assert "line 2" in str(raised.value) and entry not in str(raised.value)
    with pytest.raises(auth.KeysConfigError, match=reason) as raised:
        create_app(make_settings(repository, api_keys=f"good-key,{entry}"))
    assert "entry 2" in str(raised.value) and entry not in str(raised.value)


def test_a_missing_keys_file_stops_the_start(repository, tmp_path):
    with pytest.raises(auth.KeysConfigError, match="cannot read"):
        create_app(make_settings(repository, api_keys_file=tmp_path / "absent"))


def test_no_key_reaches_the_logs(repository, caplog):
    caplog.set_level(logging.DEBUG)
    with start_client(make_settings(repository, api_keys=KEY)) as client:
        wait_ready(client)
        assert classify(client, bearer(KEY)).status_code == 200
        assert client.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/v1/models", headers=bearer(WRONG_KEY)).status_code == 401
        assert client.get("/v1/models/nope", headers=bearer(KEY)).status_code == 404
    lines = [logs.JsonFormatter().format(record) for record in caplog.records]
    access = [line for line in lines if '"logger": "service.access"' in line]
    assert len(access) >= 4 and any('" 401' in line or "401" in line for line in access)
    assert any("API keys on: 1 configured" in line for line in lines)
    for line in lines:
        assert KEY not in line and WRONG_KEY not in line, line


def test_provenance_and_load_errors_need_a_key(repository):
    # Version 2 fails to load: /readyz names it, and only a caller with a key learns why.
    staging = repository / "colours" / ".broken"
    staging.mkdir()
    (staging / kerve_manifest.MODEL_FILE).write_bytes(b"PK\x03\x04 not a keras zip")
    shutil.copy(repository / "colours" / "1" / kerve_manifest.MANIFEST_FILE, staging)
    staging.rename(repository / "colours" / "2")
    with start_client(make_settings(repository, api_keys=KEY)) as client:
        wait_ready(client)  # on version 1
        wait_until(lambda: client.get("/readyz").json()["failed"])
        anonymous = client.get("/readyz").json()
        keyed = client.get("/readyz", headers=bearer(KEY)).json()
        assert (
            anonymous["models"] == keyed["models"] == {"colours": {"1": "AVAILABLE", "2": "FAILED"}}
        )
        assert "not a .keras archive" in keyed["failed"]["colours"]["2"]
        assert anonymous["failed"] == {
            "colours": {"2": "failed to load (send an API key to see why)"}
        }
        assert str(repository) not in str(anonymous)
        assert client.get("/v1/models/colours").status_code == 401
        info = client.get("/v1/models/colours", headers=bearer(KEY)).json()
        provenance = next(v for v in info["versions"] if v["version"] == 1)["provenance"]
        assert provenance  # what a key shows, and the 401 above hid


def test_the_openapi_document_describes_the_keys(keyed):
    document = keyed.get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    paths = document["paths"]
    for path, method in (("/v1/models", "get"), ("/v1/classify", "post"), ("/metrics", "get")):
        operation = paths[path][method]
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}]
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    infer = paths["/v2/models/{name}/infer"]["post"]["responses"]["401"]
    assert infer["content"]["application/json"]["schema"]["$ref"].endswith("/ProtocolError")
    for path in ("/healthz", "/readyz"):
        assert "security" not in paths[path]["get"] and "401" not in paths[path]["get"]["responses"]


def test_kerve_api_key_makes_a_key_the_server_takes(repository, tmp_path, capsys, monkeypatch):
    assert kerve_cli.main(["api-key"]) == 0
    key, line = capsys.readouterr().out.splitlines()
    assert len(key) >= 43 and line == auth.hashed_line(key)
    assert kerve_cli.main(["api-key"]) == 0
    assert capsys.readouterr().out.splitlines()[0] != key  # random each time
    keys_file = tmp_path / "api-keys.txt"
    keys_file.write_text("# no newline at the end")
    assert kerve_cli.main(["api-key", "--append", str(keys_file)]) == 0
    (appended,) = capsys.readouterr().out.splitlines()
    assert keys_file.read_text().splitlines() == [
        "# no newline at the end",
        auth.hashed_line(appended),
    ]
    with live_server(make_settings(repository, api_keys_file=keys_file)) as url:
        monkeypatch.delenv(kerve_cli.API_KEY_VARIABLE, raising=False)
        with pytest.raises(kerve_cli.CommandError, match="401"):
            kerve_cli.server_rows(url)
        monkeypatch.setenv(kerve_cli.API_KEY_VARIABLE, appended)
        assert kerve_cli.server_rows(url) == [["colours", "1", "AVAILABLE", "classification", ""]]
