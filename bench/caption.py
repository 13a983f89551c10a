"""Captioning benchmark: captions/s with batched decoding against one-by-one decoding.

    python -m bench.caption [--models-dir models] [--model captioner] [--concurrency 16]
                            [--beam-size 1] [--seconds 10] [--rounds 3]

Serves one published captioner (the zoo's by default) twice: with its batching
(the encoder runs once per batch and each decoder step runs every sequence of
the batch together) and with ``max_batch_size`` 1 (each image encoded and decoded
alone). N closed-loop clients send held-out test scenes as PNGs to
``POST /v1/caption``; the phases alternate so the host's drift falls on both.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import shutil
import tempfile
from pathlib import Path

from PIL import Image

import kerve_manifest
from bench.classify import machine_description, measure_service, median_run
from bench.server import ROOT, running_service
from training.data import scenes

NUM_SCENES = 32


def scene_pngs(image_size: int) -> list[bytes]:
    """Held-out test scenes (test items, held-out backgrounds) as PNG files."""
    generator = scenes.SceneGenerator("test", image_size, seed=7)
    bodies = []
    for index in range(NUM_SCENES):
        buffer = io.BytesIO()
        Image.fromarray(generator.scene(index).image).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    return bodies


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="captioner")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured phase")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians win")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/)")
    args = parser.parse_args(argv)
    args.out = args.out or ROOT / "bench" / "results" / f"caption-beam{args.beam_size}.json"

    versions = kerve_manifest.list_versions(args.models_dir / args.model)
    if not versions:
        raise SystemExit(f"no {args.model} in {args.models_dir}: run `make models` first")
    source = args.models_dir / args.model / str(versions[-1])
    manifest = kerve_manifest.read_manifest(source)
    workdir = Path(tempfile.mkdtemp(prefix="kerve-bench-"))
    # Only the captioner is served, so no other model competes for the CPU.
    shutil.copytree(source, workdir / "models" / args.model / "1")
    bodies = scene_pngs(manifest.input.height)
    path = f"/v1/caption?beam_size={args.beam_size}"
    unbatched_env = {"SERVE_BATCHING": json.dumps({"max_batch_size": 1})}
    rounds: dict[str, list[dict]] = {"batched": [], "one_by_one": []}
    print(f"model: {source} ({manifest.description}); server logs in {workdir}")
    with (
        running_service(workdir / "models", workdir / "batched.log") as (batched_url, batched),
        running_service(workdir / "models", workdir / "one.log", unbatched_env) as (one_url, one),
    ):
        for number in range(1, args.rounds + 1):
            for key, url, process in (
                ("batched", batched_url, batched),
                ("one_by_one", one_url, one),
            ):
                rounds[key].append(
                    measure_service(url, process, bodies, args, path, content_type="image/png")
                )
            print(f"round {number}:", {k: v[-1]["throughput_per_s"] for k, v in rounds.items()})

    results = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "model": f"{source.relative_to(args.models_dir)}: {manifest.description}",
        "max_batch_size": manifest.batching.max_batch_size,
        "beam_size": args.beam_size,
        "concurrency": args.concurrency,
        "seconds_per_phase": args.seconds,
        "rounds": args.rounds,
        **{key: median_run(runs, "throughput_per_s") for key, runs in rounds.items()},
        "all_rounds": rounds,
    }
    results["batched_vs_one_by_one"] = round(
        results["batched"]["throughput_per_s"] / results["one_by_one"]["throughput_per_s"], 2
    )
    print(markdown(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


def markdown(results: dict) -> str:
    rows = [
        "| decoding | captions/s | p50 ms | p95 ms | p99 ms | mean batch | server CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, name in (
        ("batched", f"batched (max_batch_size {results['max_batch_size']})"),
        ("one_by_one", "one by one (max_batch_size 1)"),
    ):
        r = results[key]
        rows.append(
            f"| {name} | {r['throughput_per_s']:.1f} | {r['p50_ms']} | {r['p95_ms']} "
            f"| {r['p99_ms']} | {r['mean_batch_size']} | {r['server_cpu_percent']} |"
        )
    per_round = [
        f"{b['throughput_per_s'] / o['throughput_per_s']:.2f}"
        for b, o in zip(results["all_rounds"]["batched"], results["all_rounds"]["one_by_one"],
                        strict=True)
    ]  # fmt: skip
    rows += [
        "",
        f"{results['concurrency']} clients, beam_size {results['beam_size']}; medians of "
        f"{results['rounds']} interleaved rounds of {results['seconds_per_phase']:g} s "
        f"(batched / one by one per round: {', '.join(per_round)}).",
        "",
        f"- batched / one by one: **{results['batched_vs_one_by_one']}**",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
