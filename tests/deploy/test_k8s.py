"""The Kubernetes manifests in deploy/k8s validate against the Kubernetes API schemas and
agree with the service: its routes, its port, its settings and its metrics.

kubectl is not needed: `render` builds what `kubectl apply -k` would send for the part of
kustomize these manifests use, and raises on any other part.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml
from starlette.routing import Match

import kerve_manifest
from service.metrics import Metrics
from service.settings import BatchingOverride, Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The oldest Kubernetes the manifests claim and the newest kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30", "1.37")
UVICORN_DRAIN_S = 30  # service/__main__.py: timeout_graceful_shutdown


# -- the kustomize subset --------------------------------------------------------------
class UnsupportedKustomization(Exception):
    """The manifests use a kustomize feature `render` does not implement."""


KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "resources", "components", "patches", "labels", "images",
}  # fmt: skip
# Strategic merge: these lists merge element by element on the key; the replaced ones
# are those Kubernetes declares without a merge key. A patch with any other list fails.
MERGE_KEYS = {"containers": "name", "env": "name"}
REPLACED_LISTS = {"tolerations", "metrics"}


def load_documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def render(directory: Path, visited: tuple[Path, ...] = ()) -> list[dict]:
    """The objects `kubectl apply -k directory` sends."""
    directory = directory.resolve()
    # kustomize's cycle rule: a folder may not build on a folder that contains it.
    if any(root.is_relative_to(directory) for root in visited):
        raise UnsupportedKustomization(f"{directory} contains {visited[-1]}: kustomize refuses")
    (kustomization,) = load_documents(directory / "kustomization.yaml")
    if kustomization.get("kind") != "Kustomization":
        raise UnsupportedKustomization(f"{directory}: kind {kustomization.get('kind')}")
    return build(kustomization, directory, [], visited)


def build(
    kustomization: dict, directory: Path, objects: list[dict], visited: tuple[Path, ...] = ()
) -> list[dict]:
    """Resources, then components, then patches, labels and images, as kustomize orders them."""
    unknown = kustomization.keys() - KUSTOMIZATION_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: {sorted(unknown)}")
    visited = (*visited, directory.resolve())
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects = objects + (render(path, visited) if path.is_dir() else load_documents(path))
    for entry in kustomization.get("components", []):
        (component,) = load_documents(directory / entry / "kustomization.yaml")
        if component.get("kind") != "Component":
            raise UnsupportedKustomization(f"{entry}: a component must be kind Component")
        objects = build(component, directory / entry, objects, visited)
    for entry in kustomization.get("patches", []):
        if entry.keys() != {"path"}:
            raise UnsupportedKustomization(f"patch {entry}: only `path` is implemented")
        for patch in load_documents(directory / entry["path"]):
            merge(find_target(objects, patch), patch)
    for entry in kustomization.get("labels", []):
        if entry.keys() != {"pairs"}:  # includeSelectors, includeTemplates
            raise UnsupportedKustomization(f"labels {entry}: only `pairs` is implemented")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for entry in kustomization.get("images", []):
        if not entry.keys() <= {"name", "newName", "newTag"}:
            raise UnsupportedKustomization(f"images {entry}")
        for container in containers(objects):
            set_image(container, entry)
    return objects


def find_target(objects: list[dict], patch: dict) -> dict:
    targets = [
        obj
        for obj in objects
        if (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
        == (patch["apiVersion"], patch["kind"], patch["metadata"]["name"])
    ]
    if len(targets) != 1:
        raise UnsupportedKustomization(f"patch for {patch['kind']} matches {len(targets)}")
    return targets[0]


def merge(original: dict, patch: dict) -> None:
    """Strategic merge, limited to maps, MERGE_KEYS lists and REPLACED_LISTS."""
    for key, value in patch.items():
        if key.startswith("$") or value is None:
            raise UnsupportedKustomization(f"patch directive {key}: {value}")
        if isinstance(value, dict) and isinstance(original.get(key), dict):
            merge(original[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS:
            original[key] = merge_list(original.get(key, []), value, MERGE_KEYS[key])
        elif isinstance(value, list) and key not in REPLACED_LISTS:
            raise UnsupportedKustomization(f"list {key!r}: its strategic-merge rule is unknown")
        else:
            original[key] = value


def merge_list(items: list[dict], patch: list[dict], key: str) -> list[dict]:
    """kustomize's order: the patch's elements, each merged into the original it names,
    then the originals the patch leaves alone."""
    originals = {item[key]: item for item in items}
    patched = {item[key] for item in patch}
    for item in patch:
        if item[key] in originals:
            merge(originals[item[key]], item)
    merged = [originals.get(item[key], item) for item in patch]
    return merged + [item for item in items if item[key] not in patched]


def containers(value):
    """Every container of every pod spec, at any depth."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key in ("containers", "initContainers"):
                yield from child
            else:
                yield from containers(child)
    elif isinstance(value, list):
        for child in value:
            yield from containers(child)


def set_image(container: dict, entry: dict) -> None:
    image = container["image"]
    if "@" in image:
        raise UnsupportedKustomization(f"image digest {image}")
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    if name == entry["name"]:
        name, tag = entry.get("newName", name), entry.get("newTag", tag)
        container["image"] = f"{name}:{tag}" if tag else name


# -- fixtures and lookups ----------------------------------------------------------------
# A user's overlays, as the README shows them: the queue-depth component on either.
OVERLAYS = {
    "base+queue-depth": {"resources": ["base"], "components": ["queue-depth"]},
    "gpu+queue-depth": {"resources": ["gpu"], "components": ["queue-depth"]},
}
RENDERS = ("base", "gpu", *OVERLAYS)


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    """What `kubectl apply -k` sends for deploy/k8s, deploy/k8s/gpu and the overlays."""
    built = {"base": render(K8S), "gpu": render(K8S / "gpu")}
    return built | {name: build(overlay, K8S, []) for name, overlay in OVERLAYS.items()}


@pytest.fixture(scope="module")
def app():
    # Imported here: the app pulls in TensorFlow, which only the route checks need.
    from service.app import create_app

    return create_app(Settings())  # no lifespan runs, so no model loads


def one(objects: list[dict], kind: str) -> dict:
    (obj,) = [obj for obj in objects if obj["kind"] == kind]
    return obj


def server(objects: list[dict]) -> dict:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def environment(objects: list[dict]) -> dict[str, str]:
    """The server's variables set to a value (those from a Secret: `from_secrets`)."""
    env = server(objects)["env"]
    names = [variable["name"] for variable in env]
    assert len(names) == len(set(names)), f"duplicate env: {names}"
    return {variable["name"]: variable["value"] for variable in env if "valueFrom" not in variable}


def from_secrets(objects: list[dict]) -> dict[str, dict]:
    """The server's variables taken from a Secret: name -> its secretKeyRef."""
    env = server(objects)["env"]
    return {v["name"]: v["valueFrom"]["secretKeyRef"] for v in env if "valueFrom" in v}


def mounts(objects: list[dict]) -> dict[str, tuple[dict, dict]]:
    """The server's mount path -> (its volumeMount, the pod volume it names)."""
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in server(objects)["volumeMounts"]}


def serves_get(app, path: str) -> bool:
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "path_params": {}}
    return any(route.matches(scope)[0] is Match.FULL for route in app.routes)


def validate(obj: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {where}: {error}")


def kustomizations() -> list[Path]:
    return sorted(path.resolve() for path in K8S.rglob("kustomization.yaml"))


# -- files and schemas ----------------------------------------------------------------------
def test_every_file_parses_and_a_kustomization_uses_it():
    used = set()
    for path in kustomizations():
        (kustomization,) = load_documents(path)
        entries = kustomization.get("resources", []) + [
            patch["path"] for patch in kustomization.get("patches", [])
        ]
        used |= {(path.parent / entry).resolve() for entry in entries}
    files = {path.resolve() for path in K8S.rglob("*.y*ml")}
    for path in files:
        assert load_documents(path), path
    assert files - set(kustomizations()) - used == set()
    assert {path.name for path in (K8S / "base").glob("*.yaml")} == {
        "kustomization.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pvc.yaml", "pdb.yaml",
    }  # fmt: skip


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_file_validates_strictly(version):
    checked = 0
    for path in kustomizations():
        (kustomization,) = load_documents(path)
        for entry in kustomization.get("resources", []):
            if (path.parent / entry).is_file():
                for obj in load_documents(path.parent / entry):
                    if obj["kind"] != "ServiceMonitor":  # a CRD: checked on its own below
                        validate(obj, version)
                        checked += 1
    assert checked == 5


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", RENDERS)
def test_every_render_validates_strictly(renders, name, version):
    objects = renders[name]
    assert sorted(obj["kind"] for obj in objects) == [
        "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
        "PodDisruptionBudget", "Service",
    ]  # fmt: skip
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "kerve"
        validate(obj, version)


def test_strict_validation_rejects_an_unknown_field(renders):
    service = copy.deepcopy(one(renders["base"], "Service"))
    service["spec"]["ports"][0]["targetport"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError, match="targetport"):
        kubernetes_validate.validate(service, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_renderer_fails_on_what_it_does_not_implement():
    with pytest.raises(UnsupportedKustomization, match="namePrefix"):
        build({"resources": ["base"], "namePrefix": "canary-"}, K8S, [])
    with pytest.raises(UnsupportedKustomization, match="volumes"):
        merge({"spec": {}}, {"spec": {"volumes": [{"name": "cache"}]}})
    labels = [{"pairs": {}, "includeSelectors": True}]
    with pytest.raises(UnsupportedKustomization, match="includeSelectors"):
        build({"resources": ["base"], "labels": labels}, K8S, [])


def test_the_renderer_refuses_an_overlay_inside_its_base(tmp_path):
    """kustomize does (`cycle detected`), which is why the base lives in base/."""
    (tmp_path / "overlay").mkdir()
    (tmp_path / "kustomization.yaml").write_text("kind: Kustomization\nresources: []\n")
    (tmp_path / "overlay/kustomization.yaml").write_text("kind: Kustomization\nresources: [../]\n")
    with pytest.raises(UnsupportedKustomization, match="kustomize refuses"):
        render(tmp_path / "overlay")
    assert render(K8S) == render(K8S / "base")


# -- the pod and the service ------------------------------------------------------------------
def test_probes_hit_the_health_routes_on_the_served_port(renders, app):
    container = server(renders["base"])
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 8000}
    assert environment(renders["base"])["SERVE_PORT"] == "8000"
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness")}
    probes["readiness"] = container["readinessProbe"]["httpGet"]
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz",
    }  # fmt: skip
    assert {probe["port"] for probe in probes.values()} == {"http"}
    assert container["readinessProbe"]["periodSeconds"] <= 5
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    annotations = one(renders["base"], "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
    }  # fmt: skip
    for path in ("/healthz", "/readyz", "/metrics"):
        assert serves_get(app, path), path
    assert not serves_get(app, "/no-such-route")


def test_the_pod_outlives_its_drain(renders):
    """Kubernetes kills the pod at terminationGracePeriodSeconds: after the preStop sleep
    and the server's own drain, so requests cut off get Kerve's 503, not a reset."""
    spec = one(renders["base"], "Deployment")["spec"]["template"]["spec"]
    pre_stop = server(renders["base"])["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "/bin/sleep"
    drain = float(environment(renders["base"])["SERVE_GRACEFUL_SHUTDOWN_S"])
    assert spec["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + drain + 5


def test_the_service_and_the_budget_select_the_pods(renders):
    objects = renders["base"]
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "deployment": deployment["spec"]["selector"]["matchLabels"],
        "service": one(objects, "Service")["spec"]["selector"],
        "budget": one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for spread in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        selectors["spread"] = spread["labelSelector"]["matchLabels"]
    for name, selector in selectors.items():
        assert selector and selector.items() <= pod_labels.items(), name
    (port,) = one(objects, "Service")["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "http")
    assert one(objects, "Service")["spec"]["type"] == "ClusterIP"


def test_the_hpa_scales_the_deployment(renders):
    deployment = one(renders["base"], "Deployment")
    hpa = one(renders["base"], "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"],
    }  # fmt: skip
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert deployment["spec"]["replicas"] == hpa["minReplicas"]
    (cpu,) = hpa["metrics"]
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert one(renders["gpu"], "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 4


def test_the_queue_depth_component_scales_on_a_metric_kerve_exports(renders):
    for name in ("base+queue-depth", "gpu+queue-depth"):
        cpu, queue = one(renders[name], "HorizontalPodAutoscaler")["spec"]["metrics"]
        assert cpu == one(renders["base"], "HorizontalPodAutoscaler")["spec"]["metrics"][0]
        assert queue["type"] == "Pods"
        assert queue["pods"]["metric"]["name"] == "kerve_queue_depth"
    assert "# TYPE kerve_queue_depth gauge" in Metrics().exposition().decode()


def test_the_pod_mounts_the_models_claim_read_only(renders):
    claim = one(renders["base"], "PersistentVolumeClaim")
    models, volume = mounts(renders["base"])[environment(renders["base"])["SERVE_MODELS_DIR"]]
    assert models["readOnly"] is True
    source = volume["persistentVolumeClaim"]
    assert source == {"claimName": claim["metadata"]["name"], "readOnly": True}
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_the_pod_runs_as_kerve_on_a_read_only_root_with_a_writable_tmp(renders):
    pod = one(renders["base"], "Deployment")["spec"]["template"]["spec"]
    container = server(renders["base"])
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    tmp, volume = mounts(renders["base"])["/tmp"]
    assert "emptyDir" in volume and not tmp.get("readOnly")
    assert environment(renders["base"])["HOME"].startswith("/tmp")


def test_shutdown_outlasts_the_drain(renders):
    pod = one(renders["base"], "Deployment")["spec"]["template"]["spec"]
    command = server(renders["base"])["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep"
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + UVICORN_DRAIN_S


def test_gpu_overlay_takes_a_gpu_on_the_gpu_image(renders):
    container = server(renders["gpu"])
    assert container["image"] == "kerve:0.1.0-gpu"
    assert server(renders["base"])["image"] == "kerve:0.1.0"
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "8Gi"
    pod = one(renders["gpu"], "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    env = environment(renders["gpu"])
    assert env.keys() > environment(renders["base"]).keys()  # the patch merged, not replaced
    assert (env["SERVE_GPU_MEMORY_GROWTH"], env["SERVE_WORKERS"]) == ("true", "1")
    gpu_batch = BatchingOverride.model_validate_json(env["SERVE_BATCHING"]).max_batch_size
    assert gpu_batch > kerve_manifest.BatchingSpec().max_batch_size
    assert pod["securityContext"]["runAsUser"] == 10001  # the base's pod spec survives


# -- settings -----------------------------------------------------------------------------------
def test_every_serve_variable_is_a_setting(renders):
    fields = {f"SERVE_{name.upper()}" for name in Settings.model_fields}
    for name, objects in renders.items():
        used = {
            key for key in environment(objects) | from_secrets(objects) if key.startswith("SERVE_")
        }
        # Settings ignores unknown SERVE_ names, so a typo would pass silently there.
        assert used <= fields, f"{name}: {sorted(used - fields)}"


@pytest.mark.parametrize("name", ["base", "gpu"])
def test_every_serve_value_parses(renders, name, monkeypatch):
    env = environment(renders[name])
    batching = pydantic.TypeAdapter(dict[str, BatchingOverride])
    BatchingOverride.model_validate_json(env["SERVE_BATCHING"])
    batching.validate_json(env.get("SERVE_MODEL_BATCHING", "{}"))
    for key in [key for key in os.environ if key.startswith("SERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("SERVE_"):
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 8000, 1)
    assert str(settings.models_dir) == "/models"
    cpu_request = int(server(renders[name])["resources"]["requests"]["cpu"])
    assert settings.preprocess_threads == cpu_request // 2


def test_the_api_keys_come_from_an_optional_secret(renders, monkeypatch):
    """Keys live in a Secret, never in a manifest; a pod without the Secret starts with
    keys off, and Prometheus, which scrapes with no credentials, can still scrape."""
    for name, objects in renders.items():
        assert from_secrets(objects) == {
            "SERVE_API_KEYS": {"name": "kerve-api-keys", "key": "keys", "optional": True}
        }, name
        assert not {"SERVE_API_KEYS", "SERVE_API_KEYS_FILE"} & environment(objects).keys()
    for key in [key for key in os.environ if key.startswith("SERVE_")]:
        monkeypatch.delenv(key)
    for key, value in environment(renders["base"]).items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # as the pod starts without the Secret
    assert settings.api_keys == "" and settings.api_keys_file is None
    assert settings.metrics_need_key is False


# -- the Prometheus Operator ----------------------------------------------------------------------
def test_the_service_monitor_scrapes_the_service(renders, app):
    (monitor,) = render(K8S / "prometheus-operator")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["metadata"]["name"] == "kerve"
    assert monitor["spec"].keys() == {"selector", "endpoints"}
    service = one(renders["base"], "Service")
    selector = monitor["spec"]["selector"]
    assert selector.keys() == {"matchLabels"}
    assert selector["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint.keys() <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in port_names
        assert serves_get(app, endpoint["path"])
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
