"""The compose stack's files hang together, and every dashboard panel's metric is one
that Kerve's /metrics really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from service.auth import KeyRing, hashed_line
from tests.helpers import encode, make_settings, solid, start_client, wait_ready

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kerve.json"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(DEPLOY / "docker-compose.yml")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_compose_runs_kerve_prometheus_grafana_and_locust(compose):
    services = compose["services"]
    assert set(services) == {"kerve", "prometheus", "grafana", "locust"}
    assert "8000:8000" in services["kerve"]["ports"]
    assert "../models:/models:ro" in services["kerve"]["volumes"]
    assert (DEPLOY / services["kerve"]["build"]["context"] / "Dockerfile").exists()
    assert (DEPLOY / ".." / services["locust"]["build"]["dockerfile"]).exists()
    assert "http://kerve:8000" in services["locust"]["command"]
    assert services["locust"]["depends_on"]["kerve"]["condition"] == "service_healthy"
    for service in services.values():  # every file a service mounts is in the repository
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), volume


def test_prometheus_scrapes_kerve_where_compose_serves_it(compose):
    config = load_yaml(DEPLOY / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["kerve:8000"]
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]


def test_kerve_takes_its_keys_from_a_secret_that_holds_none_by_default(compose, repository):
    kerve = compose["services"]["kerve"]
    (secret,) = kerve["secrets"]
    env = kerve["environment"]
    assert env["SERVE_API_KEYS_FILE"] == f"/run/secrets/{secret}"
    source = re.fullmatch(
        r"\$\{KERVE_API_KEYS_FILE:-(\./[\w.-]+)\}", compose["secrets"][secret]["file"]
    )
    default = DEPLOY / source.group(1)
    assert not KeyRing.from_settings(make_settings(repository, api_keys_file=default))  # off
    # The file the compose comments tell to make is never committed.
    assert "/deploy/api-keys.txt" in (DEPLOY.parent / ".gitignore").read_text().splitlines()
    assert "KERVE_API_KEY" in compose["services"]["locust"]["environment"]


def test_prometheus_scrapes_kerve_when_its_keys_are_on(compose, repository, tmp_path):
    """prometheus.yml sends no credentials: compose leaves /metrics open to it."""
    (job,) = load_yaml(DEPLOY / "prometheus.yml")["scrape_configs"]
    assert not {"authorization", "basic_auth"} & job.keys()
    keys = tmp_path / "api-keys.txt"
    keys.write_text(hashed_line("a-key") + "\n")
    env = compose["services"]["kerve"]["environment"]
    settings = make_settings(
        repository, api_keys_file=keys, metrics_need_key=env["SERVE_METRICS_NEED_KEY"]
    )
    with start_client(settings) as client:
        wait_ready(client)
        assert client.get(job["metrics_path"]).status_code == 200
        assert client.get("/v1/models").status_code == 401


def test_grafana_provisions_the_datasource_and_the_dashboard(compose, dashboard):
    (source,) = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    (provider,) = load_yaml(DEPLOY / "grafana/provisioning/dashboards/kerve.yml")["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_dashboard_shows_what_a_load_test_needs(dashboard):
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ("kerve_requests_total", "kerve_request_duration_seconds_bucket",
                   "kerve_queue_depth", "kerve_batch_size_bucket",
                   "kerve_inference_seconds_bucket", "kerve_rejected_total",
                   "kerve_timeouts_total", "kerve_model_loaded"):  # fmt: skip
        assert metric in exprs, metric
    assert "sum by (task, status)" in exprs  # requests by task and status
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs


def test_every_metric_on_the_dashboard_is_exported(repository, dashboard):
    with start_client(make_settings(repository)) as client:
        wait_ready(client)
        image = encode(solid((200, 0, 0)), "PNG")
        headers = {"Content-Type": "image/png"}
        assert client.post("/v1/classify", content=image, headers=headers).status_code == 200
        exported = exported_names(client.get("/metrics").text)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bkerve_[a-z_]+", expr)}
    assert used and used <= exported, sorted(used - exported)


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names(text: str) -> set[str]:
    """Every series name the exposition declares (a labelled counter that has not
    counted yet is declared by its TYPE line alone) or carries."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names
