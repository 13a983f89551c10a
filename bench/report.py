"""Turn measured tasks into markdown tables, the targets' verdicts and two plots."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench import carriers  # noqa: E402
from bench.harness import CARRIERS, SYSTEMS  # noqa: E402

COLUMNS = (  # row key: column heading
    ("system", "system"),
    ("concurrency", "clients"),
    ("throughput_per_s", "samples/s"),
    ("vs_raw", "× fastest raw"),
    ("vs_raw_keras", "× raw Keras"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("mean_batch_size", "mean batch"),
    ("model_ms", "model ms per batch"),
    ("server_cpu_percent", "server CPU %"),
    ("peak_rss_mib", "peak RSS MiB"),
    ("client_cpu_percent", "client CPU %"),
    ("errors", "errors"),
)
FASTEST_RAW = "fastest-raw"  # stands for the fastest raw engine at each concurrency
PEERS = (  # what Kerve's throughput is divided by in the summary and the verdicts
    (FASTEST_RAW, "fastest raw"),
    ("raw-keras", "raw Keras"),
    ("kerve-keras", "Kerve on Keras"),
    ("kerve-unbatched", "batching off"),
    ("naive", "naive"),
    ("triton", "Triton"),
    ("bentoml", "BentoML"),
    ("litserve", "LitServe"),
    ("ray", "Ray"),
)
# issue 8's targets, for classification at the highest concurrency: Kerve / peer >= ratio
# (the raw ceiling's is now over the fastest raw engine, not Keras alone)
TARGETS = {FASTEST_RAW: 0.75, "kerve-unbatched": 3.0, "naive": 3.0, "ray": 1.3}
LATENCY_TARGET_MS = 3.0  # Kerve's p50 at one client, over the fastest raw model at batch 1
THROUGHPUT_PLOT = "bench-throughput.png"
P99_PLOT = "bench-p99.png"


def is_raw(system: str) -> bool:
    return system.startswith("raw-")


def fastest_raw(rows: list[dict]) -> dict[int, dict]:
    """Per concurrency, the raw engine's row with the highest throughput."""
    fastest: dict[int, dict] = {}
    for row in rows:
        best = fastest.get(row["concurrency"])
        if is_raw(row["system"]) and (
            best is None or row["throughput_per_s"] > best["throughput_per_s"]
        ):
            fastest[row["concurrency"]] = row
    return fastest


def with_ratios(rows: list[dict]) -> list[dict]:
    """Rows with ``vs_raw`` (throughput over the fastest raw engine's at the same
    concurrency, so at the same batch size) and ``vs_raw_keras`` (over raw Keras's)."""
    fastest = fastest_raw(rows)
    keras = {r["concurrency"]: r for r in rows if r["system"] == "raw-keras"}

    def ratio(row: dict, over: dict[int, dict]) -> float | None:
        base = over.get(row["concurrency"])
        return round(row["throughput_per_s"] / base["throughput_per_s"], 2) if base else None

    return [
        {**row, "vs_raw": ratio(row, fastest), "vs_raw_keras": ratio(row, keras)} for row in rows
    ]


def fastest_raw_line(result: dict) -> str | None:
    """Which raw engine is fastest at each concurrency: what "× fastest raw" divides by."""
    fastest = fastest_raw(result["rows"])
    if not fastest:
        return None
    parts = [
        f"{c} client{'s' if c > 1 else ''}: {SYSTEMS[r['system']].removesuffix(' (no server)')} "
        f"({r['throughput_per_s']:g}/s)"
        for c, r in sorted(fastest.items())
    ]
    return "Fastest raw engine (the base of × fastest raw): " + "; ".join(parts) + "."


def engine_line(result: dict) -> str | None:
    """The engine Kerve's ``SERVE_ENGINE=auto`` chose, which the batching peers run too."""
    chosen = result.get("kerve_engine")
    if not chosen:
        return None
    return (
        f"Kerve's `SERVE_ENGINE=auto` chose **{chosen['engine']} {chosen['precision']}** "
        f"({chosen.get('reason', '')}); Triton, BentoML, LitServe and Ray Serve run it too."
    )


def task_table(result: dict) -> str:
    rows = sorted(
        with_ratios(result["rows"]),
        key=lambda r: (r["concurrency"], list(SYSTEMS).index(r["system"])),
    )
    lines = [
        "| " + " | ".join(heading for _, heading in COLUMNS) + " |",
        "|---|" + "---:|" * (len(COLUMNS) - 1),
    ]
    for row in rows:
        cells = [SYSTEMS[row["system"]]] + [_cell(row[key]) for key, _ in COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    for system, why in result.get("skipped", {}).items():
        lines.append(f"| {SYSTEMS[system]} | {why} |" + " |" * (len(COLUMNS) - 2))
    notes = [line for line in (fastest_raw_line(result), engine_line(result)) if line]
    return "\n".join(lines + ([""] + notes if notes else []))


def rows_at(result: dict, concurrency: int) -> dict[str, dict]:
    """Each system's row at ``concurrency``, the fastest raw engine's as FASTEST_RAW too."""
    at = {r["system"]: r for r in result["rows"] if r["concurrency"] == concurrency}
    fastest = fastest_raw(result["rows"]).get(concurrency)
    return {**at, FASTEST_RAW: fastest} if fastest else at


def summary_table(results: dict[str, dict]) -> str:
    """Per task, at its highest concurrency: Kerve's throughput over each peer's."""
    lines = [
        "| task | model | clients | Kerve samples/s | Kerve engine | "
        + " | ".join(f"Kerve / {name}" for _, name in PEERS)
        + " | Kerve p50 − fastest raw at 1 client |",
        "|---|---|---:|---:|---|" + "---:|" * (len(PEERS) + 1),
    ]
    for task, result in results.items():
        top = max(r["concurrency"] for r in result["rows"])
        at_top = rows_at(result, top)
        kerve = at_top.get("kerve")
        if kerve is None:
            continue
        ratios = [
            f"{kerve['throughput_per_s'] / at_top[s]['throughput_per_s']:.2f}"
            if s in at_top
            else "–"
            for s, _ in PEERS
        ]
        chosen = result.get("kerve_engine") or {}
        engine = f"{chosen['engine']} {chosen['precision']}" if chosen else "–"
        gap = latency_gap_ms(result)
        lines.append(
            f"| {task} | {result['model']} | {top} | {kerve['throughput_per_s']:.1f} | {engine} | "
            + " | ".join(ratios)
            + f" | {'–' if gap is None else f'{gap:+.1f} ms'} |"
        )
    return "\n".join(lines)


def latency_gap_ms(result: dict) -> float | None:
    """Kerve's p50 at one client minus the fastest raw engine's time for a batch of 1."""
    at_one = rows_at(result, 1)
    if "kerve" not in at_one or FASTEST_RAW not in at_one:
        return None
    return at_one["kerve"]["p50_ms"] - at_one[FASTEST_RAW]["p50_ms"]


def serving_overhead_ms(result: dict) -> float | None:
    """Kerve's mean latency at one client minus its model's mean time in the same phase:
    what serving adds, free of the drift between the raw run and the server's."""
    kerve = next(
        (r for r in result["rows"] if r["system"] == "kerve" and r["concurrency"] == 1), None
    )
    if kerve is None or kerve.get("model_ms") is None:
        return None
    return kerve["mean_ms"] - kerve["model_ms"]


def verdicts(result: dict) -> list[str]:
    """The targets, checked against one task's rows (they are set for classification)."""
    top = max(r["concurrency"] for r in result["rows"])
    at_top = rows_at(result, top)
    lines = []
    if "kerve" in at_top:
        kerve = at_top["kerve"]["throughput_per_s"]
        for system, name in PEERS:
            if system not in at_top:
                continue
            ratio = kerve / at_top[system]["throughput_per_s"]
            if system == FASTEST_RAW:
                name = f"fastest raw ({SYSTEMS[at_top[system]['system']]})"
            line = f"- Kerve / {name} at {top} clients: {ratio:.2f}"
            if system in TARGETS:
                met = "met" if ratio >= TARGETS[system] else "**not met**"
                line += f" (target ≥ {TARGETS[system]}: {met})"
            lines.append(line)
    gap = latency_gap_ms(result)
    if gap is not None:
        met = "met" if gap <= LATENCY_TARGET_MS else "**not met**"
        lines.append(
            f"- Kerve p50 at 1 client − fastest raw batch of 1: {gap:+.1f} ms "
            f"(target ≤ {LATENCY_TARGET_MS:g} ms: {met})"
        )
    overhead = serving_overhead_ms(result)
    if overhead is not None:
        lines.append(
            f"- in the same phase, Kerve's mean latency at 1 client − its model's mean time: "
            f"{overhead:+.1f} ms (what serving adds: HTTP, decoding, batching, the response)"
        )
    return lines


def systems_table() -> str:
    """How each system receives a request and which engine runs the model: both are part
    of what each system costs."""
    engines = {
        "kerve": "its `SERVE_ENGINE=auto` choice",
        "kerve-keras": "Keras (`SERVE_ENGINE=keras`)",
        "kerve-unbatched": "its `SERVE_ENGINE=auto` choice",
        "naive": "Keras, `model.predict` per request",
    }
    lines = ["| system | receives the image as | model runs on |", "|---|---|---|"]
    for system, carrier in CARRIERS.items():
        engine = engines.get(system, "the engine Kerve's auto chose")
        lines.append(f"| {SYSTEMS[system]} | {carriers.DESCRIPTIONS[carrier]} | {engine} |")
    lines.append(
        "| raw ONNX Runtime, OpenVINO, Keras | nothing: preprocessed samples, in process "
        "| each engine, exported and compiled as Kerve does |"
    )
    return "\n".join(lines)


def markdown(results: dict[str, dict], image_prefix: str) -> str:
    first = next(iter(results.values()))
    parts = [
        f"**Machine:** {first['machine']}. **Date:** {first['date']}. "
        f"**Command:** `{first['command']}`.",
        "",
        summary_table(results),
        "",
        f"![throughput]({image_prefix}{THROUGHPUT_PLOT})",
        f"![p99 latency]({image_prefix}{P99_PLOT})",
        "",
        "Every server runs Kerve's preprocessing and postprocessing; how it receives a request "
        "(a generate request's JSON goes the same way) and what runs the model:",
        "",
        systems_table(),
    ]
    for task, result in results.items():
        batching = (
            f"max_batch_size {result['max_batch_size']}, max_delay_ms {result['max_delay_ms']:g}"
        )
        parts += [
            "",
            f"### {task}: {result['model']} ({batching})",
            "",
            f"{result['seconds']:g} s per phase after {result['warmup_s']:g} s of warm-up.",
            "",
            task_table(result),
        ]
        statuses = error_statuses(result)
        if statuses:
            parts += ["", statuses]
        if task == "classify":
            parts += ["", *verdicts(result)]
    return "\n".join(parts)


def error_statuses(result: dict) -> str | None:
    """The statuses of the errors each system answered (BentoML's 503s, say), if any."""
    found = [
        f"{SYSTEMS[r['system']]} at {r['concurrency']} clients: "
        + ", ".join(f"{n} × {status}" for status, n in r["error_statuses"].items())
        for r in result["rows"]
        if r.get("error_statuses")
    ]
    return ("Errors: " + "; ".join(found) + ".") if found else None


def upgraded(result: dict) -> dict:
    """A result measured before the raw model ran on each engine: its ``raw`` is Keras."""
    rows = [{**r, "system": "raw-keras"} if r["system"] == "raw" else r for r in result["rows"]]
    skipped = {
        ("raw-keras" if s == "raw" else s): why for s, why in result.get("skipped", {}).items()
    }
    return {**result, "rows": rows, "skipped": skipped}


def plot(results: dict[str, dict], out_dir: Path) -> list[Path]:
    """Throughput and p99 latency against concurrency, one panel per task."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, key, label in (
        (THROUGHPUT_PLOT, "throughput_per_s", "samples/s"),
        (P99_PLOT, "p99_ms", "p99 latency, ms (raw: time per batch)"),
    ):
        columns = min(3, len(results))
        rows = -(-len(results) // columns)
        figure, axes = plt.subplots(
            rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False
        )
        for axis in axes.flat[len(results) :]:
            axis.set_visible(False)
        for axis, (task, result) in zip(axes.flat, results.items(), strict=False):
            for system, name in SYSTEMS.items():
                rows = sorted(
                    (r for r in result["rows"] if r["system"] == system),
                    key=lambda r: r["concurrency"],
                )
                if rows:
                    values = [r[key] if r[key] is not None else r["p50_ms"] for r in rows]
                    style = "--" if is_raw(system) else "-"
                    axis.plot(
                        [r["concurrency"] for r in rows], values, style, marker="o", label=name
                    )
            axis.set_xscale("log", base=2)
            clients = sorted({r["concurrency"] for r in result["rows"]})
            axis.set_xticks(clients, labels=[str(c) for c in clients])
            axis.minorticks_off()
            if key == "p99_ms":
                axis.set_yscale("log")
            axis.set_title(f"{task} ({result['model']})", fontsize=9)
            axis.set_xlabel("concurrent clients")
            axis.set_ylabel(label, fontsize=8)
            axis.grid(alpha=0.3)
        axes.flat[0].legend(fontsize=7)
        figure.tight_layout()
        path = out_dir / filename
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def update_docs(doc: Path, section: str, marker: str = "bench") -> None:
    """Replace what lies between the ``marker`` comments in ``doc`` with ``section``."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    text = doc.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{doc} has no {begin} ... {end} section to fill")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{section}\n{end}{tail}")


def image_prefix(doc: Path | None, img_dir: Path, markdown_dir: Path) -> str:
    """How a markdown file at ``doc`` (or in ``markdown_dir``) refers to ``img_dir``."""
    where = doc.parent if doc is not None else markdown_dir
    return os.path.relpath(img_dir, where).replace(os.sep, "/") + "/"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
