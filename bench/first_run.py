"""A newcomer's first minutes, timed: `make serve` in a checkout, until the first right
classification of a photo and until every demo model is served.

    python -m bench.first_run /tmp/fresh-clone --port 8765            # venv already made
    python -m bench.first_run /tmp/fresh-clone --port 8765 --first-only

It runs `make serve PORT=...` in the checkout (as a user would, zoo training behind the
server), posts a photo of a cat to /v1/classify until one answers 200, then polls
GET /v1/models until every demo model has an AVAILABLE version (or, with --first-only,
stops there), then stops `make serve` with Ctrl-C (SIGINT to its process group) and
checks that nothing it started is left running. Prints one JSON line of timings.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from PIL import Image

DEMO_MODELS = (
    "imagenet-classifier",
    "fashion-classifier",
    "segmenter",
    "captioner",
    "denoiser",
    "generator",
)


def cat_jpeg() -> bytes:
    import skimage.data

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def first_classification(base_url: str, photo: bytes, deadline: float) -> dict:
    headers = {"Content-Type": "image/jpeg"}
    while time.monotonic() < deadline:
        try:
            answer = httpx.post(f"{base_url}/v1/classify", content=photo, headers=headers)
            if answer.status_code == 200:
                return answer.json()
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError("no classification answered in time")


def served_models(base_url: str) -> set[str]:
    try:
        listing = httpx.get(f"{base_url}/v1/models", timeout=10).json()["models"]
    except (httpx.TransportError, ValueError, KeyError):
        return set()
    return {
        model["name"]
        for model in listing
        if any(v.get("state") == "AVAILABLE" for v in model.get("versions", []))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--first-only", action="store_true")
    parser.add_argument("--timeout-min", type=float, default=90)
    parser.add_argument("--log", type=Path, default=Path("first-run.log"))
    args = parser.parse_args(argv)
    base_url = f"http://127.0.0.1:{args.port}"
    photo = cat_jpeg()
    started = time.monotonic()
    deadline = started + args.timeout_min * 60
    with args.log.open("w") as log:
        make = subprocess.Popen(
            ["make", "serve", f"PORT={args.port}"],
            cwd=args.checkout,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal would give it
        )
        timings: dict = {}
        try:
            answer = first_classification(base_url, photo, deadline)
            timings["first_classify_s"] = round(time.monotonic() - started, 1)
            best = answer["predictions"][0][0]
            timings["answer"] = f"{answer['model']}: {best['label']} {best['score']:.2f}"
            seen: dict[str, float] = {}
            while not args.first_only and len(seen) < len(DEMO_MODELS):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {sorted(seen)} were served in time")
                for name in served_models(base_url) - seen.keys():
                    seen[name] = round(time.monotonic() - started, 1)
                    print(f"{name} served after {seen[name]} s", flush=True)
                time.sleep(5)
            timings["served_s"] = seen
        finally:
            children = psutil.Process(make.pid).children(recursive=True)
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C
            make.wait(timeout=120)
            gone, alive = psutil.wait_procs(children, timeout=30)
            timings["left_running"] = [p.pid for p in alive]
    print(json.dumps(timings), flush=True)
    return 0 if not timings["left_running"] else 1


if __name__ == "__main__":
    sys.exit(main())
