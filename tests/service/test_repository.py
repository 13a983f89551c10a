from __future__ import annotations

import shutil
import threading

import pytest

import kerve_manifest
from tests.helpers import (
    build_colour_classifier,
    colour_manifest,
    encode,
    make_settings,
    publish_colour_classifier,
    solid,
    start_client,
    wait_ready,
    wait_until,
)
from training import export

BODY = encode(solid((200, 30, 30)), "PNG")
HEADERS = {"Content-Type": "image/png"}


def classify(client, url="/v1/classify"):
    return client.post(url, content=BODY, headers=HEADERS)


def model_info(client, name="colours") -> dict:
    return client.get(f"/v1/models/{name}").json()


def states(client, name="colours") -> dict[int, str]:
    return {v["version"]: v["state"] for v in model_info(client, name)["versions"]}


def publish_corrupt_version(repository, version: int) -> None:
    """A version whose manifest is fine but whose model.keras is garbage."""
    staging = repository / "colours" / f".corrupt-{version}"
    staging.mkdir()
    (staging / kerve_manifest.MODEL_FILE).write_bytes(b"PK\x03\x04 definitely not a keras zip")
    shutil.copy(repository / "colours" / "1" / kerve_manifest.MANIFEST_FILE, staging)
    staging.rename(repository / "colours" / str(version))


def test_hot_reload_under_traffic_then_a_corrupt_version(repository):
    with start_client(make_settings(repository)) as client:
        wait_ready(client)
        statuses, versions_seen = [], set()
        stop = threading.Event()

        def traffic():
            while not stop.is_set():
                response = classify(client)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions_seen.add(response.json()["version"])

        workers = [threading.Thread(target=traffic) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            wait_until(lambda: len(statuses) > 20)
            publish_colour_classifier(repository, sharpness=20.0)  # version 2
            wait_until(lambda: 2 in versions_seen)
            count_at_swap = len(statuses)
            wait_until(lambda: len(statuses) > count_at_swap + 20)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert set(statuses) == {200}, "a request failed during the hot reload"
        assert versions_seen == {1, 2}
        info = model_info(client)
        assert info["serving_version"] == 2

        publish_corrupt_version(repository, 3)
        wait_until(lambda: states(client).get(3) == "FAILED")
        failed = next(v for v in model_info(client)["versions"] if v["version"] == 3)
        assert "not a .keras archive" in failed["error"]
        assert states(client) == {3: "FAILED", 2: "AVAILABLE", 1: "AVAILABLE"}
        assert classify(client).json()["version"] == 2
        ready = client.get("/readyz")
        assert ready.status_code == 200  # colours still serves version 2
        assert "3" in ready.json()["failed"]["colours"]
        pinned = classify(client, "/v1/models/colours/versions/3/classify")
        assert pinned.status_code == 404
        assert "FAILED" in pinned.json()["error"]["message"]
        metrics = client.get("/metrics").text
        assert 'kerve_model_load_failures_total{model="colours",version="3"} 1.0' in metrics


def test_failed_version_is_retried_when_its_files_change(repository):
    publish_corrupt_version(repository, 2)
    with start_client(make_settings(repository)) as client:
        wait_ready(client)
        assert states(client) == {2: "FAILED", 1: "AVAILABLE"}
        fixed = repository / "colours" / "fixed"
        publish_colour_classifier(repository, name="tmp-fixed", sharpness=5.0)
        shutil.move(repository / "tmp-fixed" / "1", fixed)
        shutil.rmtree(repository / "tmp-fixed")
        shutil.rmtree(repository / "colours" / "2")
        fixed.rename(repository / "colours" / "2")
        wait_until(lambda: states(client).get(2) == "AVAILABLE")
        assert classify(client).json()["version"] == 2


def test_only_the_newest_versions_stay_loaded(repository):
    settings = make_settings(repository, versions_loaded=1)
    with start_client(settings) as client:
        wait_ready(client)
        publish_colour_classifier(repository, sharpness=3.0)
        wait_until(lambda: states(client) == {2: "AVAILABLE"})
        assert classify(client).json()["version"] == 2
        old = classify(client, "/v1/models/colours/versions/1/classify")
        assert old.status_code == 404
        metrics = client.get("/metrics").text
        assert 'kerve_model_loaded{model="colours",version="1"} 0.0' in metrics


def test_removed_version_is_unloaded(repository):
    publish_colour_classifier(repository, sharpness=3.0)
    with start_client(make_settings(repository)) as client:
        wait_ready(client)
        assert classify(client).json()["version"] == 2
        shutil.rmtree(repository / "colours" / "2")
        wait_until(lambda: states(client) == {1: "AVAILABLE"})
        assert classify(client).json()["version"] == 1


def test_a_model_with_no_loadable_version_is_not_ready(tmp_path):
    root = tmp_path / "models"
    publish_colour_classifier(root, name="good")
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / kerve_manifest.MANIFEST_FILE).write_text('{"task": "classification"}')
    (broken / kerve_manifest.MODEL_FILE).write_bytes(b"")
    with start_client(make_settings(root)) as client:
        wait_until(lambda: client.get("/readyz").json()["initial_load_done"])
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["Retry-After"] == "1"
        assert "invalid manifest.json" in ready.json()["failed"]["broken"]["1"]
        # The good model serves regardless.
        assert classify(client, "/v1/models/good/classify").status_code == 200
        unavailable = classify(client, "/v1/models/broken/classify")
        assert unavailable.status_code == 503
        assert unavailable.json()["error"]["code"] == "not_ready"


def test_load_errors_name_files_within_the_repository_and_nothing_of_the_server(tmp_path):
    """Clients read load errors (/readyz, /v1/models); the server's paths and pydantic's
    documentation links are not theirs to see. The log keeps the whole error."""
    root = tmp_path / "models"
    no_manifest = root / "no-manifest" / "2"
    no_manifest.mkdir(parents=True)
    (no_manifest / kerve_manifest.MODEL_FILE).write_bytes(b"")
    invalid = root / "invalid" / "1"
    invalid.mkdir(parents=True)
    (invalid / kerve_manifest.MANIFEST_FILE).write_text('{"task": "classification"}')
    with start_client(make_settings(root)) as client:
        wait_until(lambda: client.get("/readyz").json()["initial_load_done"])
        failed = client.get("/readyz").json()["failed"]
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    errors = [failed["no-manifest"]["2"], failed["invalid"]["1"]]
    errors += [v["error"] for name in failed for v in listed[name]["versions"]]
    assert "'no-manifest/2/manifest.json'" in errors[0]
    assert "invalid manifest.json" in errors[1] and "Field required" in errors[1]
    for error in errors:
        assert str(tmp_path) not in error and "pydantic.dev" not in error, error


def test_a_model_published_after_the_first_load_leaves_readiness_alone(repository, tmp_path):
    """Replicas share a model volume: a model that appears later (loading, or failing)
    must not take every one of them out of its load balancer. A new process waits."""
    with start_client(make_settings(repository)) as client:
        wait_ready(client)
        late = repository / "late" / "1"
        late.mkdir(parents=True)
        (late / kerve_manifest.MANIFEST_FILE).write_text('{"task": "classification"}')
        (late / kerve_manifest.MODEL_FILE).write_bytes(b"")
        wait_until(lambda: "late" in client.get("/readyz").json()["failed"])
        assert client.get("/readyz").status_code == 200
        assert classify(client).status_code == 200
        publish_colour_classifier(repository, name="later")  # loads: becomes servable
        wait_until(lambda: classify(client, "/v1/models/later/classify").status_code == 200)
        assert client.get("/readyz").status_code == 200
    with start_client(make_settings(repository)) as client:  # a new replica waits for all
        wait_until(lambda: client.get("/readyz").json()["initial_load_done"])
        assert client.get("/readyz").status_code == 503


def test_labels_that_do_not_match_the_outputs_fail_at_load(tmp_path):
    from tests.helpers import build_colour_classifier, colour_manifest
    from training import export

    root = tmp_path / "models"
    four_labels = colour_manifest().model_copy(update={"labels": ["r", "g", "b", "extra"]})
    export.publish(build_colour_classifier(), four_labels, root, "mislabelled")
    with start_client(make_settings(root)) as client:
        wait_until(lambda: client.get("/readyz").json()["initial_load_done"])
        error = model_info(client, "mislabelled")["versions"][0]["error"]
        assert "4 labels need" in error


def test_model_metadata(client):
    listing = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in listing] == ["colours"]
    info = model_info(client)
    version = info["versions"][0]
    assert info["serving_version"] == 1
    assert version["state"] == "AVAILABLE" and version["task"] == "classification"
    assert version["labels"] == ["red", "green", "blue"]
    assert version["input"]["height"] == 16
    assert version["batching"]["batch_sizes"] == [1, 2, 4, 8, 16, 32]
    assert version["provenance"]["keras_version"]
    assert client.get("/v1/models/colours/versions/1").json()["version"] == 1
    assert client.get("/v1/models/colours/versions/9").status_code == 404
    assert client.get("/v1/models/colours/versions/x").status_code == 400
    assert client.get("/v1/models/nope").json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path", ["/healthz", "/docs", "/openapi.json"])
def test_operational_endpoints(client, path):
    response = client.get(path)
    assert response.status_code == 200


def test_docs_assets_are_served_locally(client):
    page = client.get("/docs").text
    assert "https://" not in page  # nothing fetched from a CDN
    assert client.get("/static/swagger-ui/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/swagger-ui/swagger-ui.css").status_code == 200
    assert client.get("/static/swagger-ui/favicon.png").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "multipart/form-data", "application/json"} <= body.keys()


def test_the_heap_is_frozen_while_serving_and_unfrozen_when_a_version_leaves(repository):
    """Loaded models sit out of the garbage collector's full passes; an unloaded one's
    objects become collectable again."""
    import gc
    import weakref

    with start_client(make_settings(repository, versions_loaded=1)) as client:
        wait_ready(client)
        assert gc.get_freeze_count() > 0
        app_repository = client.app.state.repository
        old_model = weakref.ref(app_repository.get("colours").model)
        publish_colour_classifier(repository, sharpness=20.0)
        wait_until(lambda: states(client) == {2: "AVAILABLE"})
        wait_until(lambda: gc.collect() >= 0 and old_model() is None, timeout_s=30)
        assert gc.get_freeze_count() > 0  # frozen again once the old version has gone
    assert gc.get_freeze_count() == 0


def test_a_model_marked_default_for_its_task_answers_the_plain_route(repository):
    """`colours` comes first by name, but the manifest of `photos` says default_for_task."""
    manifest = colour_manifest().model_copy(update={"default_for_task": True})
    export.publish(build_colour_classifier(), manifest, repository, "photos")
    with start_client(make_settings(repository)) as client:
        wait_ready(client)
        assert classify(client).json()["model"] == "photos"
    with start_client(make_settings(repository, default_models={"classification": "colours"})) as c:
        wait_ready(c)
        assert classify(c).json()["model"] == "colours"  # the settings still decide first


def test_before_the_first_load_ends_the_plain_route_waits_for_a_default_model(repository):
    """Models load one at a time: until the first load is done, a model that is not marked
    default_for_task does not answer /v1/classify in the default's place."""
    from service.errors import NotReady
    from service.metrics import Metrics
    from service.repository import ModelRepository, ModelVersion, VersionState

    store = ModelRepository(make_settings(repository), Metrics(), admission=None)
    runtime = type("Loaded", (), {"task": "classification", "manifest": colour_manifest()})()
    store._models["colours"] = {
        1: ModelVersion("colours", 1, repository, (), VersionState.AVAILABLE, runtime)
    }
    with pytest.raises(NotReady):
        store.get_for_task("classification", None, None)
    store.initial_load_done = True
    assert store.get_for_task("classification", None, None) is runtime
