"""Classification benchmark: the raw model ceiling against Kerve with and without batching.

    python -m bench.classify [--model mobilenet_v2|mobilenet_v3_small] [--seconds 20]
                             [--concurrency 32] [--alpha 1.0]

In one run on one machine it measures (a) ``predict_on_batch`` at the maximum batch
size in its own process, (b) the service with dynamic batching under N concurrent
closed-loop clients sending real 224x224 JPEGs, (c) the same service with batching
off (max_batch_size 1), and prints the ratios. The model is a MobileNet at 224x224
with random weights: speed does not depend on what the weights are.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx  # noqa: E402
import keras  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

import kerve_manifest  # noqa: E402
from bench.loadgen import run_load  # noqa: E402
from bench.server import ROOT, running_service  # noqa: E402
from training import export  # noqa: E402

IMAGE_SIZE = 224
MAX_BATCH_SIZE = 32
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "camera", "immunohistochemistry")


ARCHITECTURES = {
    # name: (keras.applications constructor, pixel scaling it expects)
    "mobilenet_v2": (keras.applications.MobileNetV2, "symmetric"),
    "mobilenet_v3_small": (keras.applications.MobileNetV3Small, "raw"),
}


def build_repository(root: Path, architecture: str, alpha: float) -> Path:
    constructor, scaling = ARCHITECTURES[architecture]
    model = constructor(
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), alpha=alpha, weights=None, classes=1000
    )
    manifest = kerve_manifest.Manifest(
        task="classification",
        input=kerve_manifest.InputSpec.scaled(IMAGE_SIZE, IMAGE_SIZE, 3, scaling),
        labels=[f"class_{i}" for i in range(1000)],
        batching=kerve_manifest.BatchingSpec(max_batch_size=MAX_BATCH_SIZE, max_delay_ms=5),
        description=f"benchmark only: {architecture} alpha {alpha}, random weights",
    )
    return export.publish(model, manifest, root, architecture)


def photo_jpegs() -> list[bytes]:
    """Real photos, centre-cropped and resized to 224x224, as JPEG files."""
    bodies = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((IMAGE_SIZE, IMAGE_SIZE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        bodies.append(buffer.getvalue())
    return bodies


def raw_ceiling(model_path: Path, batch_size: int, seconds: float) -> dict:
    command = [
        sys.executable,
        "-m",
        "bench.raw_model",
        str(model_path),
        "--batch-size",
        str(batch_size),
        "--seconds",
        str(seconds),
    ]
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def batch_size_totals(base_url: str) -> tuple[float, float]:
    text = httpx.get(f"{base_url}/metrics").text

    def total(suffix: str) -> float:
        return sum(
            float(v)
            for v in re.findall(rf"^kerve_batch_size_{suffix}\{{.*\}} (\S+)$", text, re.MULTILINE)
        )

    return total("sum"), total("count")


def measure_service(
    base_url: str, process, bodies: list[bytes], args, path: str = "/v1/classify?top_k=5",
    content_type: str = "image/jpeg",
) -> dict:  # fmt: skip
    """One closed-loop load phase against a running server, with its own metrics."""
    sum_before, count_before = batch_size_totals(base_url)
    cpu_before = sum(process.cpu_times()[:2])
    result = run_load(
        f"{base_url}{path}",
        bodies,
        {"Content-Type": content_type},
        args.concurrency,
        args.seconds,
        warmup_s=args.warmup,
    )
    cpu_seconds = sum(process.cpu_times()[:2]) - cpu_before
    sum_after, count_after = batch_size_totals(base_url)
    summary = result.summary()
    batches = max(count_after - count_before, 1)
    summary["mean_batch_size"] = round((sum_after - sum_before) / batches, 2)
    summary["server_cpu_percent"] = round(100 * cpu_seconds / (args.seconds + args.warmup), 1)
    summary["server_rss_mib"] = round(process.memory_info().rss / 2**20)
    return summary


def median_run(runs: list[dict], key: str) -> dict:
    """The run with the median value of ``key`` (the middle one of an odd count)."""
    return sorted(runs, key=lambda run: run[key])[(len(runs) - 1) // 2]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured phase")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians win")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), default="mobilenet_v2")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNet width multiplier")
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/MODEL.json)")
    args = parser.parse_args(argv)
    args.out = args.out or ROOT / "bench" / "results" / f"classify-{args.model}.json"
    model_name = f"{args.model} alpha {args.alpha}, {IMAGE_SIZE}x{IMAGE_SIZE}"

    workdir = Path(tempfile.mkdtemp(prefix="kerve-bench-"))
    models_dir = workdir / "models"
    model_path = build_repository(models_dir, args.model, args.alpha) / kerve_manifest.MODEL_FILE
    print(f"model: {model_name}; server logs in {workdir}")
    bodies = photo_jpegs()
    unbatched_env = {"SERVE_BATCHING": json.dumps({"max_batch_size": 1})}
    rounds: dict[str, list[dict]] = {
        "raw_batch_max": [],
        "raw_batch_1": [],
        "service_batched": [],
        "service_unbatched": [],
    }
    # Both servers stay up and the phases alternate, so that the host's noise,
    # which drifts over minutes on a shared machine, falls on every configuration.
    with (
        running_service(models_dir, workdir / "batched.log") as (batched_url, batched),
        running_service(models_dir, workdir / "unbatched.log", unbatched_env) as (
            unbatched_url,
            unbatched,
        ),
    ):
        for number in range(1, args.rounds + 1):
            rounds["raw_batch_max"].append(raw_ceiling(model_path, MAX_BATCH_SIZE, args.seconds))
            rounds["raw_batch_1"].append(raw_ceiling(model_path, 1, args.seconds))
            rounds["service_batched"].append(measure_service(batched_url, batched, bodies, args))
            rounds["service_unbatched"].append(
                measure_service(unbatched_url, unbatched, bodies, args)
            )
            print(f"round {number}:", {k: _rate(v[-1]) for k, v in rounds.items()})

    results = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "model": model_name,
        "concurrency": args.concurrency,
        "seconds_per_phase": args.seconds,
        "rounds": args.rounds,
        "raw_batch_max": median_run(rounds["raw_batch_max"], "samples_per_s"),
        "raw_batch_1": median_run(rounds["raw_batch_1"], "samples_per_s"),
        "service_batched": median_run(rounds["service_batched"], "throughput_per_s"),
        "service_unbatched": median_run(rounds["service_unbatched"], "throughput_per_s"),
        "all_rounds": rounds,
    }
    raw = results["raw_batch_max"]["samples_per_s"]
    batched_rate = results["service_batched"]["throughput_per_s"]
    unbatched_rate = results["service_unbatched"]["throughput_per_s"]
    results["ratios"] = {
        "service_vs_raw_batched": round(batched_rate / raw, 3),
        "batched_vs_unbatched_service": round(batched_rate / unbatched_rate, 3),
        "raw_batch_max_vs_raw_batch_1": round(raw / results["raw_batch_1"]["samples_per_s"], 3),
    }
    print(markdown(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


def _rate(run: dict) -> float:
    return round(run.get("samples_per_s") or run["throughput_per_s"], 1)


def machine_description() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0] if names else cpu
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Keras {keras.__version__} ({keras.backend.backend()})"
    )


def markdown(results: dict) -> str:
    raw, raw1 = results["raw_batch_max"], results["raw_batch_1"]
    rows = [
        "| configuration | images/s | p50 ms | p99 ms | mean batch | server CPU % | client CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| raw `predict_on_batch`, batch {raw['batch_size']} | {raw['samples_per_s']:.1f} "
        f"| {raw['ms_per_batch']:.1f} (per batch) | | {raw['batch_size']} | | |",
        f"| raw `predict_on_batch`, batch 1 | {raw1['samples_per_s']:.1f} "
        f"| {raw1['ms_per_batch']:.1f} | | 1 | | |",
    ]
    for key, name in (
        ("service_batched", "Kerve, batching on"),
        ("service_unbatched", "Kerve, batching off"),
    ):
        r = results[key]
        rows.append(
            f"| {name}, {r['concurrency']} clients | {r['throughput_per_s']:.1f} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {r['mean_batch_size']} | {r['server_cpu_percent']} "
            f"| {r['client_cpu_percent']} |"
        )
    ratios = results["ratios"]
    per_round = []
    for raw_run, batched, unbatched in zip(
        *(
            results["all_rounds"][key]
            for key in ("raw_batch_max", "service_batched", "service_unbatched")
        ),
        strict=True,
    ):
        vs_raw = batched["throughput_per_s"] / raw_run["samples_per_s"]
        vs_unbatched = batched["throughput_per_s"] / unbatched["throughput_per_s"]
        per_round.append(f"{vs_raw:.2f} / {vs_unbatched:.2f}")
    rows += [
        "",
        f"Medians of {results['rounds']} interleaved rounds of {results['seconds_per_phase']:g} s; "
        f"per round (vs raw / vs unbatched): {', '.join(per_round)}.",
        "",
        f"- Kerve with batching / raw batched ceiling: **{ratios['service_vs_raw_batched']}**",
        f"- Kerve with batching / Kerve without: **{ratios['batched_vs_unbatched_service']}**",
        f"- raw batch {raw['batch_size']} / raw batch 1 (what batching can buy at most): "
        f"**{ratios['raw_batch_max_vs_raw_batch_1']}**",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
