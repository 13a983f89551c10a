"""The benchmark harness (``python -m bench``) on tiny models: it starts every system,
measures, and writes the JSON, the table with all its columns, the plots and the docs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from bench import __main__ as bench_main
from bench import harness, report, standalone
from bench.server import running_process
from bench.workloads import TASKS
from tests.helpers import (
    publish_captioner,
    publish_colour_classifier,
    publish_colour_segmenter,
    publish_denoiser,
    publish_generator,
)

SYSTEMS_WITHOUT_RAY = ["raw", "kerve", "kerve-unbatched", "naive"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "models"
    publish_colour_classifier(root)
    publish_colour_segmenter(root)
    publish_captioner(root)
    publish_denoiser(root)
    publish_generator(root)
    return root


def test_harness_measures_every_system_and_writes_the_report(models, tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\nkept\n")
    readme = tmp_path / "README.md"
    readme.write_text("## Performance\n<!-- bench-summary:begin -->\n<!-- bench-summary:end -->\n")
    results = bench_main.main(
        ["--task", "classify", "--models-dir", str(models), "--concurrency", "1,4",
         "--seconds", "0.5", "--warmup", "0.2", "--systems", ",".join(SYSTEMS_WITHOUT_RAY),
         "--results-dir", str(tmp_path / "results"), "--docs", str(doc),
         "--img-dir", str(tmp_path / "img"), "--readme", str(readme)]
    )  # fmt: skip

    result = json.loads((tmp_path / "results" / "classify.json").read_text())
    assert results["classify"] == result
    assert result["model"] == "colours/1"
    measured = {(row["system"], row["concurrency"]) for row in result["rows"]}
    assert measured == {(s, c) for s in SYSTEMS_WITHOUT_RAY for c in (1, 4)}
    for row in result["rows"]:
        assert {key for key, _ in report.COLUMNS} - {"vs_raw"} <= row.keys()
        assert row["throughput_per_s"] > 0 and row["errors"] == 0
        assert row["peak_rss_mib"] > 10 and row["server_cpu_percent"] > 0
        if row["system"] != "raw":
            assert row["requests"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        if row["system"] in ("kerve-unbatched", "naive"):
            assert row["mean_batch_size"] == 1

    text = doc.read_text()
    assert "old" not in text and text.endswith("kept\n")
    header = "| " + " | ".join(heading for _, heading in report.COLUMNS) + " |"
    assert header in text
    for name in ("raw model (no server)", "Kerve", "Kerve, batching off", "naive FastAPI"):
        assert f"| {name} | 1 |" in text and f"| {name} | 4 |" in text
    assert "Kerve / raw model at 4 clients" in text  # the targets' verdicts
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


def test_ray_is_reported_as_skipped_when_not_installed(models, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "ray" else real_find_spec(name)
    )
    setup = harness.Setup("classify", models / "colours" / "1", (1,), 0.1, 0.1, tmp_path, 4, 1.0)
    measured = harness.measure_task(setup, ["ray"])
    assert measured["rows"] == [] and "pip install" in measured["skipped"]["ray"]
    table = report.task_table({**measured, "rows": []})
    assert "| Ray Serve | not installed" in table


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray[serve] not installed")
def test_ray_serve_app_batches_and_answers_like_kerve(models, tmp_path):
    from bench.loadgen import run_load

    version_dir = models / "colours" / "1"
    served = standalone.load(version_dir, "classify")
    arguments = ["-m", "bench.ray_app", str(version_dir), "--task", "classify",
                 "--max-batch-size", "8", "--max-delay-ms", "20"]  # fmt: skip
    with running_process(arguments, tmp_path / "ray.log") as (base_url, _process):
        body = served.workload.bodies[0]
        result = run_load(f"{base_url}/predict", [body], {"Content-Type": "image/jpeg"}, 8, 2)
        assert result.requests > 0 and result.errors == 0
        samples, batches, model_seconds = harness.batch_totals("ray", base_url)
        assert samples / batches > 1 and model_seconds > 0
        import httpx

        answer = httpx.post(f"{base_url}/predict", content=body).json()
        assert answer == json.loads(served.respond(body))


def verdict_rows(kerve: float, raw: float, p50_gap: float) -> dict:
    rows = [
        {"system": "raw", "concurrency": 1, "throughput_per_s": 10.0, "p50_ms": 10.0},
        {"system": "kerve", "concurrency": 1, "throughput_per_s": 9.0, "p50_ms": 10 + p50_gap},
        {"system": "raw", "concurrency": 64, "throughput_per_s": raw},
        {"system": "kerve", "concurrency": 64, "throughput_per_s": kerve},
        {"system": "naive", "concurrency": 64, "throughput_per_s": kerve / 3.5},
        {"system": "ray", "concurrency": 64, "throughput_per_s": kerve / 1.2},
    ]
    return {"rows": rows}


def test_verdicts_check_each_target_both_ways():
    lines = report.verdicts(verdict_rows(kerve=80.0, raw=100.0, p50_gap=2.0))
    assert lines == [
        "- Kerve / raw model at 64 clients: 0.80 (target ≥ 0.75: met)",
        "- Kerve / naive at 64 clients: 3.50 (target ≥ 3.0: met)",
        "- Kerve / Ray at 64 clients: 1.20 (target ≥ 1.3: **not met**)",
        "- Kerve p50 at 1 client − raw batch of 1: +2.0 ms (target ≤ 3 ms: met)",
    ]
    lines = report.verdicts(verdict_rows(kerve=70.0, raw=100.0, p50_gap=3.5))
    assert "0.70 (target ≥ 0.75: **not met**)" in lines[0]
    assert "+3.5 ms (target ≤ 3 ms: **not met**)" in lines[-1]


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
