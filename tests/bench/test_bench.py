"""The benchmark harness (``python -m bench``) on tiny models: it starts every system,
measures, and writes the JSON, the table with all its columns, the plots and the docs.
The peers in venvs of their own (``make bench-peers``) are tested where those exist."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench import __main__ as bench_main
from bench import carriers, harness, peers, report, standalone
from bench.workloads import TASKS, workload
from service.engines import ENGINES
from tests.helpers import (
    publish_captioner,
    publish_colour_classifier,
    publish_colour_segmenter,
    publish_denoiser,
    publish_generator,
    publish_upscaler,
)

# What runs without the peers' venvs, on the engines every install has.
LOCAL_SYSTEMS = ["raw-keras", "raw-onnxruntime", "kerve", "kerve-keras", "kerve-unbatched", "naive"]
VENV_PEERS = ["triton", "bentoml", "litserve", "ray"]


@pytest.fixture(scope="module", autouse=True)
def engine_cache(tmp_path_factory):
    """Exported engines go to the tests' own cache, for Kerve and the bench alike."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERVE_ENGINE_CACHE_DIR", str(tmp_path_factory.mktemp("engines")))
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "models"
    publish_colour_classifier(root)
    publish_colour_segmenter(root)
    publish_captioner(root)
    publish_denoiser(root)
    publish_generator(root)
    publish_upscaler(root)
    return root


def test_harness_measures_every_system_and_writes_the_report(models, tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\nkept\n")
    readme = tmp_path / "README.md"
    readme.write_text("## Performance\n<!-- bench-summary:begin -->\n<!-- bench-summary:end -->\n")
    results = bench_main.main(
        ["--task", "classify", "--models-dir", str(models), "--concurrency", "1,4",
         "--seconds", "0.5", "--warmup", "0.2", "--systems", ",".join(LOCAL_SYSTEMS),
         "--results-dir", str(tmp_path / "results"), "--docs", str(doc),
         "--img-dir", str(tmp_path / "img"), "--readme", str(readme)]
    )  # fmt: skip

    result = json.loads((tmp_path / "results" / "classify.json").read_text())
    assert results["classify"] == result
    assert result["model"] == "colours/1"
    measured = {(row["system"], row["concurrency"]) for row in result["rows"]}
    assert measured == {(s, c) for s in LOCAL_SYSTEMS for c in (1, 4)}
    # Kerve's auto choice, as its /v1/models says, and the engine each system ran on
    assert result["kerve_engine"]["engine"] in ENGINES and result["kerve_engine"]["reason"]
    assert result["engines"]["kerve"] == result["kerve_engine"]
    assert result["engines"]["kerve-keras"]["engine"] == "keras"
    assert result["engines"]["raw-onnxruntime"]["engine"] == "onnxruntime"
    for row in result["rows"]:
        assert {key for key, _ in report.COLUMNS} - {"vs_raw", "vs_raw_keras"} <= row.keys()
        assert row["throughput_per_s"] > 0 and row["errors"] == 0
        assert row["peak_rss_mib"] > 10 and row["server_cpu_percent"] > 0
        if not row["system"].startswith("raw-"):
            assert row["requests"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        if row["system"] in ("kerve-unbatched", "naive"):
            assert row["mean_batch_size"] == 1

    text = doc.read_text()
    assert "old" not in text and text.endswith("kept\n")
    header = "| " + " | ".join(heading for _, heading in report.COLUMNS) + " |"
    assert header in text
    for system in LOCAL_SYSTEMS:
        name = harness.SYSTEMS[system]
        assert f"| {name} | 1 |" in text and f"| {name} | 4 |" in text
    assert "- Kerve / fastest raw (raw " in text  # the targets' verdicts
    assert "Fastest raw engine (the base of × fastest raw): 1 client: raw " in text
    assert "Kerve's `SERVE_ENGINE=auto` chose **" in text
    assert "| Triton (PyTriton) | v2 binary tensor extension, a BYTES tensor |" in text
    assert "| classify | colours/1 | 4 |" in readme.read_text()  # the summary row
    for plot in (report.THROUGHPUT_PLOT, report.P99_PLOT):
        assert f"](img/{plot})" in text
        assert Image.open(tmp_path / "img" / plot).format == "PNG"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_workload_is_one_sample_per_request_and_served_alone(models, task):
    """What the raw loop, the naive app and Ray Serve do with a body: Kerve's own
    preprocessing (one sample, so Ray's batch of calls is a batch of samples) and
    response."""
    served = standalone.load(standalone.find_version(models, task), task)
    assert served.runtime.task == TASKS[task].task
    for body in served.workload.bodies[:3]:
        prepared = served.runtime.preprocess(served.workload.request(body))
        assert len(prepared.samples) == 1
        answer = json.loads(served.respond(body))
        assert answer["model"] == served.runtime.name


def test_find_version_prefers_the_named_model_and_explains_a_missing_one(models, tmp_path):
    assert standalone.find_version(models, "classify") == models / "colours" / "1"
    assert standalone.find_version(models, "classify", "colours") == models / "colours" / "1"
    with pytest.raises(SystemExit, match="make models"):
        standalone.find_version(tmp_path, "segment")


def test_a_peer_without_its_venv_is_skipped_with_the_reason(models, tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "PEER_VENVS", tmp_path / "no-venvs")
    packages = {harness.PEERS[peer].package for peer in VENV_PEERS}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name in packages else real_find_spec(name)
    )
    setup = harness.Setup("classify", models / "colours" / "1", (1,), 0.1, 0.1, tmp_path, 4, 1.0)
    measured = harness.measure_task(setup, VENV_PEERS)
    assert measured["rows"] == []
    assert measured["skipped"] == {peer: "not installed: make bench-peers" for peer in VENV_PEERS}
    table = report.task_table(measured)
    assert "| Triton (PyTriton) | not installed: make bench-peers |" in table
    assert "| Ray Serve | not installed: make bench-peers |" in table


def test_a_peer_runs_on_its_own_venvs_python(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "PEER_VENVS", tmp_path)
    python = tmp_path / "bentoml" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    assert harness.peer_python("bentoml") == str(python)
    assert harness.unavailable("bentoml") is None


def test_a_missing_engine_skips_its_raw_run(models, tmp_path, monkeypatch):
    monkeypatch.setattr(ENGINES["openvino"], "installed", classmethod(lambda cls: False))
    setup = harness.Setup("classify", models / "colours" / "1", (1,), 0.1, 0.1, tmp_path, 4, 1.0)
    measured = harness.measure_task(setup, ["raw-openvino"])
    assert measured["rows"] == []
    assert measured["skipped"]["raw-openvino"].startswith("not installed: openvino")


def test_peer_apps_know_the_bench_tasks():
    assert set(peers.TASKS) == set(TASKS)


@pytest.mark.parametrize("carrier", sorted(carriers.DESCRIPTIONS))
def test_every_carrier_carries_the_same_body(carrier):
    jpeg, request = b"\xff\xd8 a photo", b'{"label": 1, "count": 1, "seed": 3}'
    wire = carriers.carry(carrier, "image/jpeg", (jpeg,))
    (body,) = wire.bodies
    if carrier == carriers.UPLOAD:
        assert body == jpeg and wire.headers["Content-Type"] == "image/jpeg"
    elif carrier == carriers.MULTIPART:
        assert f'name="{carriers.MULTIPART_FIELD}"'.encode() in body
        assert b"\r\n\r\n" + jpeg + b"\r\n--" in body
        assert carriers.MULTIPART_BOUNDARY in wire.headers["Content-Type"]
    elif carrier == carriers.BASE64_JSON:
        assert carriers.body_of(json.loads(body)) == jpeg
        (same,) = carriers.carry(carrier, "application/json", (request,)).bodies
        assert same == request  # a JSON request goes as itself
        assert json.loads(carriers.body_of(json.loads(same))) == json.loads(request)
    else:
        length = int(wire.headers[carriers.V2_HEADER])
        header, raw = json.loads(body[:length]), body[length:]
        assert header["inputs"][0]["shape"] == [1, 1]  # Triton's batch, then one element
        assert header["inputs"][0]["datatype"] == "BYTES"
        assert raw == struct.pack("<I", len(jpeg)) + jpeg


@pytest.mark.parametrize("peer", VENV_PEERS)
def test_a_peer_batches_and_answers_like_kerve(models, tmp_path, peer):
    """Each peer in its venv: Kerve's answer to a body, in the peer's own response, and
    batches of several samples under load, none failed."""
    if harness.peer_python(peer) is None:
        pytest.skip(f"{peer}: not installed (make bench-peers)")
    version_dir = models / "colours" / "1"
    served = standalone.load(version_dir, "classify")
    setup = harness.Setup("classify", version_dir, (8,), 1.5, 0.5, tmp_path, 8, 20.0)
    chosen = {"engine": "keras", "precision": "auto"}
    with harness.start_system(peer, setup, "", chosen) as running:
        row = harness.measure_server(running, workload("classify", setup.manifest), setup, 8)
        assert row["requests"] > 0 and row["errors"] == 0
        assert row["mean_batch_size"] > 1 and row["model_ms"] > 0
        body = served.workload.bodies[0]
        wire = carriers.carry(harness.CARRIERS[peer], "image/jpeg", (body,))
        answer = httpx.post(
            running.base_url + running.path, content=wire.bodies[0], headers=wire.headers
        )
    assert answer.status_code == 200
    assert _kerve_answer(peer, answer) == json.loads(served.respond(body))


def _kerve_answer(peer: str, answer: httpx.Response) -> dict:
    """The JSON Kerve would have answered, out of each peer's own response."""
    if peer == "triton":  # a binary BYTES tensor after the JSON header
        raw = answer.content[int(answer.headers[carriers.V2_HEADER]) :]
        return json.loads(raw[4 : 4 + struct.unpack("<I", raw[:4])[0]])
    if peer == "bentoml":  # a list: one answer per body of the batchable parameter
        (only,) = answer.json()
        return only
    return answer.json()


def verdict_rows(kerve: float, raw: float, p50_gap: float) -> dict:
    rows = [
        {"system": "raw-keras", "concurrency": 1, "throughput_per_s": 10.0, "p50_ms": 10.0},
        {"system": "raw-openvino", "concurrency": 1, "throughput_per_s": 8.0, "p50_ms": 12.5},
        {"system": "kerve", "concurrency": 1, "throughput_per_s": 9.0, "p50_ms": 10 + p50_gap},
        {"system": "raw-keras", "concurrency": 64, "throughput_per_s": raw / 2},
        {"system": "raw-openvino", "concurrency": 64, "throughput_per_s": raw},
        {"system": "kerve", "concurrency": 64, "throughput_per_s": kerve},
        {"system": "naive", "concurrency": 64, "throughput_per_s": kerve / 3.5},
        {"system": "triton", "concurrency": 64, "throughput_per_s": kerve / 0.9},
        {"system": "ray", "concurrency": 64, "throughput_per_s": kerve / 1.2},
    ]
    return {"rows": rows}


def test_verdicts_check_each_target_both_ways():
    lines = report.verdicts(verdict_rows(kerve=80.0, raw=100.0, p50_gap=2.0))
    assert lines == [
        "- Kerve / fastest raw (raw OpenVINO (no server)) at 64 clients: 0.80 (target ≥ 0.75: met)",
        "- Kerve / raw Keras at 64 clients: 1.60",
        "- Kerve / naive at 64 clients: 3.50 (target ≥ 3.0: met)",
        "- Kerve / Triton at 64 clients: 0.90",
        "- Kerve / Ray at 64 clients: 1.20 (target ≥ 1.3: **not met**)",
        "- Kerve p50 at 1 client − fastest raw batch of 1: +2.0 ms (target ≤ 3 ms: met)",
    ]
    lines = report.verdicts(verdict_rows(kerve=70.0, raw=100.0, p50_gap=3.5))
    assert "0.70 (target ≥ 0.75: **not met**)" in lines[0]
    assert "+3.5 ms (target ≤ 3 ms: **not met**)" in lines[-1]


def test_times_raw_is_over_the_fastest_raw_engine_at_each_concurrency():
    """× fastest raw divides by whichever engine is fastest at that batch size (Keras at 1
    client, OpenVINO at 64 here), × raw Keras by Keras alone; the report names which."""
    result = verdict_rows(kerve=80.0, raw=100.0, p50_gap=2.0)
    rows = {(r["system"], r["concurrency"]): r for r in report.with_ratios(result["rows"])}
    assert rows["kerve", 1]["vs_raw"] == 0.9 and rows["kerve", 1]["vs_raw_keras"] == 0.9
    assert rows["kerve", 64]["vs_raw"] == 0.8 and rows["kerve", 64]["vs_raw_keras"] == 1.6
    assert rows["raw-openvino", 64]["vs_raw"] == 1.0
    assert report.fastest_raw_line(result) == (
        "Fastest raw engine (the base of × fastest raw): 1 client: raw Keras (10/s); "
        "64 clients: raw OpenVINO (100/s)."
    )
    summary = report.summary_table({"classify": {**result, "model": "m/1"}})
    assert "| classify | m/1 | 64 | 80.0 | – | 0.80 | 1.60 | – | – | 3.50 | 0.90 |" in summary


def test_results_from_before_the_engines_read_as_raw_keras():
    old = {"rows": [{"system": "raw", "concurrency": 1, "throughput_per_s": 5.0}], "skipped": {}}
    assert report.upgraded(old)["rows"][0]["system"] == "raw-keras"


def test_error_statuses_are_reported_by_system():
    result = {
        "rows": [
            {"system": "bentoml", "concurrency": 64, "error_statuses": {"503": 12}},
            {"system": "kerve", "concurrency": 64, "error_statuses": {}},
        ]
    }
    assert report.error_statuses(result) == "Errors: BentoML at 64 clients: 12 × 503."


def test_update_docs_needs_its_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit, match="bench:begin"):
        report.update_docs(doc, "table")


def test_ab_alternates_between_servers_and_reports_medians(models, tmp_path):
    from bench import ab
    from bench.server import running_service

    with running_service(models, tmp_path / "server.log") as (base_url, _process):
        medians = ab.main(
            [f"one={base_url}", f"two={base_url}", "--task", "classify", "--models-dir",
             str(models), "--concurrency", "1,2", "--seconds", "0.3", "--warmup", "0.1",
             "--rounds", "2"]
        )  # fmt: skip
    assert set(medians) == {(name, c) for name in ("one", "two") for c in (1, 2)}
    for median in medians.values():
        assert median["throughput_per_s"] > 0 and 0 < median["p50_ms"] <= median["p99_ms"]


def test_stages_times_every_stage_of_a_request(models):
    from bench import stages

    measured = stages.main(["--task", "segment", "--models-dir", str(models), "--repeats", "3"])
    assert set(measured) == {"preprocess", "predict_batch (1)", "postprocess",
                             "model_dump_json", "jsonable_encoder + json.dumps"}  # fmt: skip
    assert all(ms > 0 for ms in measured.values())
