"""What each protocol costs on one model: Kerve's task route against the Open Inference
Protocol v2 (JSON and binary) and TF Serving's ``:predict``, in one run.

    python -m bench.protocols --models-dir models                  # the ImageNet classifier
    python -m bench.protocols --concurrency 1,64 --docs docs/BENCHMARKS.md

One Kerve server serves the classifier; every form sends the same photos, one per
request, closed-loop, each form alone. The tensor forms carry the preprocessed
float32 image (224x224x3: 602 KB as bytes, about 2 MB as JSON numbers); the image
forms carry the JPEG (a few KB) and let the server decode it.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import httpx
import numpy as np

import kerve_manifest
from bench import carriers, report, standalone
from bench.__main__ import machine_description
from bench.loadgen import run_load
from bench.server import ROOT, running_service
from bench.workloads import TOP_K, photo_jpegs, task_path
from service import imaging

TASK_FORM = "task route, JPEG"  # the baseline of the ratios


def forms(
    name: str, input_name: str, task_route: str, manifest, jpegs: list[bytes]
) -> dict[str, tuple]:
    """form -> (path, headers, bodies): the same photos as each protocol sends them."""
    tensors = [imaging.load_sample(jpeg, manifest.input, 10**8)[np.newaxis] for jpeg in jpegs]
    v2 = f"/v2/models/{name}/infer"
    return {
        TASK_FORM: (
            f"{task_route}?top_k={TOP_K}",
            {"Content-Type": "image/jpeg"},
            jpegs,
        ),
        "v2 JSON, FP32 tensor": (
            v2,
            {"Content-Type": "application/json"},
            [_v2_json(input_name, t) for t in tensors],
        ),
        "v2 binary, FP32 tensor": (v2, *carriers.v2_binary(input_name, "FP32", tensors)),
        "v2 binary, JPEG as BYTES": (v2, *carriers.v2_binary(input_name, "BYTES", jpegs)),
        ":predict JSON, FP32 tensor": (
            f"/v1/models/{name}:predict",
            {"Content-Type": "application/json"},
            [json.dumps({"instances": t.tolist()}).encode() for t in tensors],
        ),
        ":predict, JPEG as b64": (
            f"/v1/models/{name}:predict",
            {"Content-Type": "application/json"},
            [json.dumps({"instances": [{"b64": base64.b64encode(j).decode()}]}).encode()
             for j in jpegs],
        ),
    }  # fmt: skip


def _v2_json(input_name: str, tensor: np.ndarray) -> bytes:
    inputs = [_v2_input(input_name, "FP32", list(tensor.shape))]
    inputs[0]["data"] = tensor.ravel().tolist()
    return json.dumps({"inputs": inputs}).encode()


def _v2_input(input_name: str, datatype: str, shape: list[int]) -> dict:
    return {"name": input_name, "datatype": datatype, "shape": shape}


def measure(args: argparse.Namespace) -> list[dict]:
    version_dir = standalone.find_version(args.models_dir, "classify", args.model)
    manifest = kerve_manifest.read_manifest(version_dir)
    jpegs = photo_jpegs()
    root = args.workdir / "models-protocols"
    link = root / version_dir.parent.name / version_dir.name
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(version_dir.resolve(), target_is_directory=True)
    rows = []
    with running_service(root, args.workdir / "protocols-kerve.log") as (base_url, _process):
        name = version_dir.parent.name
        metadata = httpx.get(f"{base_url}/v2/models/{name}", timeout=30).json()
        input_name = metadata["inputs"][0]["name"]  # as the server reports it
        sent = forms(name, input_name, task_path(base_url, name), manifest, jpegs)
        for form, (path, headers, bodies) in sent.items():
            for concurrency in args.concurrency:
                result = run_load(
                    base_url + path, bodies, headers, concurrency, args.seconds, args.warmup
                )
                row = {"form": form, "request_kb": round(np.mean([len(b) for b in bodies]) / 1e3)}
                rows.append({**row, **result.summary()})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    baseline = {r["concurrency"]: r["throughput_per_s"] for r in rows if r["form"] == TASK_FORM}
    lines = [
        "| form | request KB | clients | images/s | x task route | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["form"] != TASK_FORM)):
        ratio = r["throughput_per_s"] / baseline[r["concurrency"]]
        lines.append(
            f"| {r['form']} | {r['request_kb']} | {r['concurrency']} | {r['throughput_per_s']} "
            f"| {ratio:.2f} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", help="default: the ImageNet classifier of the demo zoo")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--docs", type=Path, help="fill this file's protocols section")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = measure(args)
    (args.workdir / "protocols.json").write_text(json.dumps(rows, indent=2))
    section = (
        f"`python -m bench.protocols --concurrency {','.join(map(str, args.concurrency))} "
        f"--seconds {args.seconds:g}` on {machine_description()}:\n\n{table(rows)}\n"
    )
    print(section)
    if args.docs:
        report.update_docs(args.docs, section, marker="protocols")


if __name__ == "__main__":
    main()
