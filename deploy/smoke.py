"""The image's smoke test: serve a model repository, send real images to every
endpoint, and fail on a wrong answer.

    python deploy/smoke.py prepare DIR [--models-dir /zoo]   # where the zoo was trained
    python deploy/smoke.py check DIR [--models-dir /models]  # in the image being built

``prepare`` writes the images and, in ``DIR/cases.json``, what is right for each
demo model: ImageNet labels for two held-out photos, Fashion-MNIST test labels,
true masks and background phrases of test scenes, clean photos under noisy ones,
original photos over their shrunk copies (where the zoo has an upscaler), the labels
a generator is asked for. It needs the training extras.

``check`` needs only the standard library, numpy and Pillow, which the runtime
image has. It starts ``python -m service``, waits for ``/readyz``, checks every
served model through its own route, the default route of each task, the
operational endpoints and a bad image's 400. A served model without a case fails
the check, so no endpoint goes unchecked. Last, it sends SIGTERM while a request
is in flight and requires that request's answer and exit code 0. Thresholds sit
well under what the fast zoo scores and far above what a broken model would (see
``prepare``); any failure exits 1, which fails the image build.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

READY_TIMEOUT_S = 900


# -- check: what the built image answers ---------------------------------------------------
class Server:
    """``python -m service`` on a repository, with JSON requests to it."""

    def __init__(self, models_dir: Path, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable,
            "-m",
            "service",
            "--models-dir",
            str(models_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--poll-interval",
            "0",
            "--log-level",
            "warning",
        ]
        self.process = subprocess.Popen(command)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode} while loading")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise SystemExit(f"the server was not ready after {READY_TIMEOUT_S} s")

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type} if content_type else {}
        request = urllib.request.Request(self.base_url + path, body, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def post_json(self, path: str, payload: dict) -> dict:
        status, body = self.request("POST", path, json.dumps(payload).encode(), "application/json")
        if status != 200:
            raise AssertionError(f"POST {path} answered {status}: {body[:300]!r}")
        return json.loads(body)

    def post_images(self, path: str, images: list[bytes]) -> dict:
        encoded = [{"b64": base64.b64encode(image).decode()} for image in images]
        return self.post_json(path, {"images": encoded})

    def post_image(self, path: str, image: bytes) -> dict:
        return self.post_json(path, {"image": {"b64": base64.b64encode(image).decode()}})


def read_png(encoded: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded["b64"]))))


def check_classification(server: Server, route: str, model: dict, files: Path) -> tuple[float, str]:
    """Share of images whose top label is one of the case's accepted class indices."""
    images = [(files / case["file"]).read_bytes() for case in model["cases"]]
    predictions = server.post_images(route, images)["predictions"]
    pairs = list(zip((ranked[0] for ranked in predictions), model["cases"], strict=True))
    right = [top["index"] in case["indices"] for top, case in pairs]
    answers = ", ".join(f"{case['file']}: {top['label']}" for top, case in pairs)
    return sum(right) / len(right), answers if len(right) <= 4 else f"{sum(right)}/{len(right)}"


def check_segmentation(server: Server, route: str, model: dict, files: Path) -> tuple[float, str]:
    """Mean IoU over the classes in the true masks, pixels of every case pooled."""
    classes = len(model["labels"])
    confusion = np.zeros((classes, classes), np.int64)
    for case in model["cases"]:
        answer = server.post_image(route, (files / case["file"]).read_bytes())
        predicted = read_png(answer["mask"]).astype(np.int64)
        truth = np.asarray(Image.open(files / case["mask"])).astype(np.int64)
        confusion += np.bincount(
            truth.ravel() * classes + predicted.ravel(), minlength=classes * classes
        ).reshape(classes, classes)
    present = confusion.sum(axis=1) > 0
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - np.diag(confusion)
    iou = np.diag(confusion)[present] / union[present]
    return float(iou.mean()), f"mean IoU over {present.sum()} classes"


def check_captioning(server: Server, route: str, model: dict, files: Path) -> tuple[float, str]:
    """Share of captions that name the scene's background in one of its wordings."""
    images = [(files / case["file"]).read_bytes() for case in model["cases"]]
    captions = server.post_images(route, images)["captions"]
    right = [
        any(f" {phrase}" in f" {caption['caption']}" for phrase in case["phrases"])
        for caption, case in zip(captions, model["cases"], strict=True)
    ]
    return sum(right) / len(right), f"e.g. {captions[0]['caption']!r}"


def check_denoising(server: Server, route: str, model: dict, files: Path) -> tuple[float, str]:
    """Mean PSNR gain in dB: the answer against the clean photo, over the noisy input's."""
    gains = []
    for case in model["cases"]:
        clean = np.asarray(Image.open(files / case["clean"]), np.float64)
        noisy = np.asarray(Image.open(files / case["file"]), np.float64)
        answer = server.post_image(route, (files / case["file"]).read_bytes())
        gains.append(psnr(read_png(answer["image"]), clean) - psnr(noisy, clean))
    return float(np.mean(gains)), f"PSNR gains {', '.join(f'{g:+.1f}' for g in gains)} dB"


def check_upscaling(server: Server, route: str, model: dict, files: Path) -> tuple[float, str]:
    """Mean PSNR gain in dB of the answer over bicubic upscaling, both against the original
    photo the input was shrunk from."""
    gains = []
    for case in model["cases"]:
        original = np.asarray(Image.open(files / case["original"]).convert("RGB"), np.float64)
        height, width = original.shape[:2]
        small = Image.open(files / case["file"]).convert("RGB")
        upscaled = read_png(server.post_image(route, (files / case["file"]).read_bytes())["image"])
        if upscaled.shape != original.shape:
            raise AssertionError(
                f"{case['file']} came back {upscaled.shape[1]}x{upscaled.shape[0]}, "
                f"not {width}x{height}"
            )
        bicubic = small.resize((width, height), Image.Resampling.BICUBIC)
        gains.append(psnr(upscaled, original) - psnr(np.asarray(bicubic), original))
    return float(np.mean(gains)), f"PSNR over bicubic {', '.join(f'{g:+.1f}' for g in gains)} dB"


def check_generation(server: Server, route: str, model: dict, files: Path) -> tuple[float, str]:
    """Share of generated images the judge classifier files under the label asked for."""
    judge_route = f"/v1/models/{model['judge']}/classify"
    right = total = 0
    for label in model["labels"]:
        answer = server.post_json(route, {"label": label, "count": model["count"], "seed": 7})
        images = [{"b64": image["b64"]} for image in answer["images"]]  # as they came
        predictions = server.post_json(judge_route, {"images": images})["predictions"]
        right += sum(ranked[0]["label"] == answer["label"] for ranked in predictions)
        total += len(predictions)
    return right / total, f"{right}/{total} judged as asked by {model['judge']}"


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    error = np.mean((np.asarray(image, np.float64) - reference) ** 2)
    return float(10 * np.log10(255.0**2 / max(error, 1e-10)))


CHECKS: dict[str, Callable[[Server, str, dict, Path], tuple[float, str]]] = {
    "classification": check_classification,
    "segmentation": check_segmentation,
    "captioning": check_captioning,
    "denoising": check_denoising,
    "upscaling": check_upscaling,
    "generation": check_generation,
}


def first_request(model: dict, files: Path) -> tuple[bytes, str]:
    """(body, content type) for the task's default route: the first case's image, or
    for generation one image of the first label."""
    if "cases" in model:
        return (files / model["cases"][0]["file"]).read_bytes(), "image/png"
    payload = {"label": model["labels"][0], "count": 1, "seed": 1}
    return json.dumps(payload).encode(), "application/json"


class Verdicts:
    """Prints each check's line and keeps the failed ones."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, ok: bool, line: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {line}", flush=True)
        if not ok:
            self.failures.append(line)


def check(files: Path, models_dir: Path, port: int) -> int:
    cases = json.loads((files / "cases.json").read_text())["models"]
    server = Server(models_dir, port)
    verdict = Verdicts()
    try:
        server.wait_ready()
        tasks = check_models(server, cases, files, verdict)
        for name, path in tasks.values():  # each task's default route answers too
            status, body = server.request("POST", path, *first_request(cases[name], files))
            answered_by = json.loads(body).get("model") if status == 200 else None
            verdict(answered_by in cases, f"{path}: {status}, answered by {answered_by}")
        check_operations(server, verdict)
        verdict(*graceful_stop(server, cases, tasks, files))
    finally:
        if server.process.poll() is None:
            server.process.kill()
    failures = verdict.failures
    print(f"{len(failures)} failed" if failures else "smoke test passed", flush=True)
    return 1 if failures else 0


def check_models(
    server: Server, cases: dict, files: Path, verdict: Verdicts
) -> dict[str, tuple[str, str]]:
    """Score every served model through its own route (as /v1/models lists it); return
    task -> (a model with cases, the task's default route)."""
    served = json.loads(server.request("GET", "/v1/models")[1])["models"]
    verdict(bool(served), f"/v1/models lists {len(served)} models")
    tasks: dict[str, tuple[str, str]] = {}
    for entry in served:
        name = entry["name"]
        serving = [v for v in entry["versions"] if v["version"] == entry["serving_version"]]
        task = serving[0]["task"] if serving else "none: no version serves"
        model = cases.get(name)
        if model is None or model["task"] != task:
            verdict(False, f"{name} ({task}): no smoke case for it in {files / 'cases.json'}")
            continue
        route = entry["endpoints"]["task"]
        tasks.setdefault(task, (name, "/v1/" + route.rsplit("/", 1)[-1]))
        try:
            score, detail = CHECKS[task](server, route, model, files)
        except (AssertionError, KeyError, OSError, ValueError) as error:
            verdict(False, f"{route}: {error}")
            continue
        verdict(
            score >= model["minimum"],
            f"{route}: {score:.3g} (at least {model['minimum']}); {detail}",
        )
    return tasks


def check_operations(server: Server, verdict: Verdicts) -> None:
    """Health, readiness, metrics, docs, and a bad image's 400."""
    for path, wanted in (
        ("/healthz", b'"ok"'),
        ("/readyz", b'"ready":true'),
        ("/metrics", b"kerve_requests_total"),
        ("/docs", b"swagger"),
    ):
        status, body = server.request("GET", path)
        verdict(status == 200 and wanted in body, f"GET {path}: {status}")
    status, body = server.request("POST", "/v1/classify", b"not an image", "image/png")
    verdict(status == 400 and b"invalid_image" in body, f"a bad image: {status}")


def graceful_stop(server: Server, cases: dict, tasks: dict, files: Path) -> tuple[bool, str]:
    """SIGTERM during a request: that request is answered and the server exits with 0."""
    name, path = tasks["denoising"] if "denoising" in tasks else next(iter(tasks.values()))
    body, content_type = first_request(cases[name], files)
    answer: list[int] = []
    sender = threading.Thread(
        target=lambda: answer.append(server.request("POST", path, body, content_type)[0])
    )
    sender.start()
    time.sleep(0.1)
    in_flight = sender.is_alive()
    server.process.send_signal(signal.SIGTERM)
    sender.join(timeout=120)
    code = server.process.wait(timeout=60)
    return answer == [200] and code == 0, (
        f"SIGTERM with {path} {'in flight' if in_flight else 'just answered'}: "
        f"answer {answer}, exit code {code}"
    )


# -- prepare: the cases, from the data the zoo was trained on ---------------------------------
IMAGENET_CASES = {  # held-out photos and the ImageNet classes that are right for them
    "chelsea": range(281, 286),  # tabby, tiger, Persian, Siamese, Egyptian cat
    "coffee": (504, 967, 968),  # coffee mug, espresso, cup
}
FASHION_PER_CLASS = 3
SCENES = 12
DENOISE_PHOTOS = ("astronaut", "coffee")  # the denoiser's test split
DENOISE_SIDE = 256
NOISE_SIGMA = 25.0
GENERATED_PER_LABEL = 8
UPSCALER = "upscaler"  # in the zoo where npm could fetch its pretrained weights
UPSCALE_PHOTOS = ("astronaut", "coffee")  # held out from the upscaler's fine-tuning too
UPSCALE_SIDE = 256  # the original's; the input is UPSCALE_SIDE / scale
# dB over bicubic on these cases: the fast zoo's ESRGAN-slim 4x scores -0.03 (a PSNR
# near bicubic's, as measured on its own test photos); nearest-neighbour scores -1.6 and
# an answer misplaced by 2 pixels -3.3.
UPSCALER_MINIMUM = -1.0
# Thresholds: the fast zoo (docs/MODELS.md) against chance or a broken model.
MINIMUMS = {
    "imagenet-classifier": 1.0,  # both photos right
    "fashion-classifier": 0.7,  # 89% on the test split; chance 10%
    "segmenter": 0.3,  # mean IoU 0.54 on the test split; all background about 0.1
    "captioner": 0.5,  # background named in 76%; chance 25%
    "denoiser": 3.0,  # dB over the noisy input; the fast model gains about 5
    "generator": 0.2,  # 38 to 52% judged as asked; chance 10%
}


def prepare(files: Path, models_dir: Path) -> None:
    from skimage import data as skimage_data

    from training.data import captions, fashion_mnist, photos, scenes

    files.mkdir(parents=True, exist_ok=True)
    manifests = {name: newest_manifest(models_dir / name) for name in MINIMUMS}
    models: dict[str, dict] = {}

    def save(name: str, image: np.ndarray) -> str:
        Image.fromarray(image).save(files / name)
        return name

    models["imagenet-classifier"] = {
        "task": "classification",
        "cases": [
            {"file": save(f"{name}.png", getattr(skimage_data, name)()), "indices": list(indices)}
            for name, indices in IMAGENET_CASES.items()
        ],
    }

    images, labels = fashion_mnist.load("test")
    picked = [
        int(i) for label in range(10) for i in np.flatnonzero(labels == label)[:FASHION_PER_CLASS]
    ]
    models["fashion-classifier"] = {
        "task": "classification",
        "cases": [
            {"file": save(f"fashion-{i}.png", images[i]), "indices": [int(labels[i])]}
            for i in picked
        ],
    }

    def scene_cases(model: str, seed: int, truth: Callable) -> list[dict]:
        """Test scenes at the model's input size, each with ``truth(scene, stem)``."""
        size = manifests[model]["input"]["height"]
        generator = scenes.SceneGenerator("test", image_size=size, seed=seed)
        cases = []
        for index in range(SCENES):
            scene, stem = generator.scene(index), f"{model}-{index}"
            cases.append({"file": save(f"{stem}.png", scene.image), **truth(scene, stem)})
        return cases

    models["segmenter"] = {
        "task": "segmentation",
        "labels": scenes.CLASSES,
        "cases": scene_cases(
            "segmenter", 5, lambda scene, stem: {"mask": save(f"{stem}-mask.png", scene.mask)}
        ),
    }
    background_wordings = {  # "on grass", "on the grass", ...
        kind: [f"{preposition} {place}" for preposition, place in phrases]
        for kind, phrases in captions.BACKGROUND_PHRASES.items()
    }
    models["captioner"] = {
        "task": "captioning",
        "cases": scene_cases(
            "captioner", 6, lambda scene, _: {"phrases": background_wordings[scene.background.kind]}
        ),
    }

    rng = np.random.default_rng(0)
    denoise_cases = []
    for name in DENOISE_PHOTOS:
        assert name in photos.names("test"), f"{name} is not a test photo of the denoiser"
        clean = np.asarray(Image.fromarray(photos.as_rgb(photos.read_photo(name))).reduce(2))
        clean = clean[:DENOISE_SIDE, :DENOISE_SIDE]
        noisy = np.clip(np.rint(clean + rng.normal(0, NOISE_SIGMA, clean.shape)), 0, 255)
        denoise_cases.append(
            {
                "file": save(f"{name}-noisy.png", noisy.astype(np.uint8)),
                "clean": save(f"{name}-clean.png", clean),
            }
        )
    models["denoiser"] = {"task": "denoising", "cases": denoise_cases}

    if (models_dir / UPSCALER).is_dir():
        models[UPSCALER] = upscale_cases(save, newest_manifest(models_dir / UPSCALER))

    models["generator"] = {
        "task": "generation",
        "labels": manifests["generator"]["labels"],
        "count": GENERATED_PER_LABEL,
        "judge": "fashion-classifier",
    }
    for name, model in models.items():
        model["minimum"] = MINIMUMS.get(name, model.get("minimum"))
    (files / "cases.json").write_text(json.dumps({"models": models}, indent=1))
    print(f"{sum(len(m.get('cases', m.get('labels'))) for m in models.values())} cases in {files}")


def upscale_cases(save: Callable, manifest: dict) -> dict:
    """Held-out photos (halved, then cut to UPSCALE_SIDE) and their copies shrunk by the
    upscaler's scale with bicubic, as its training pairs are made."""
    from training.data import photos

    scale = manifest["upscaling"]["scale"]
    side = UPSCALE_SIDE // scale * scale
    cases = []
    for name in UPSCALE_PHOTOS:
        assert name in photos.names("test"), f"{name} is not a held-out photo"
        original = Image.fromarray(photos.as_rgb(photos.read_photo(name))).reduce(2)
        original = original.crop((0, 0, side, side))
        small = original.resize((side // scale, side // scale), Image.Resampling.BICUBIC)
        cases.append(
            {
                "file": save(f"{name}-small.png", np.asarray(small)),
                "original": save(f"{name}-original.png", np.asarray(original)),
            }
        )
    return {"task": "upscaling", "cases": cases, "minimum": UPSCALER_MINIMUM}


def newest_manifest(model_dir: Path) -> dict:
    versions = sorted((int(p.name), p) for p in model_dir.iterdir() if p.name.isdigit())
    return json.loads((versions[-1][1] / "manifest.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["prepare", "check"])
    parser.add_argument("dir", type=Path, help="where the cases are (written by prepare)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="the repository (default: /zoo for prepare, /models for check)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("SMOKE_PORT", 8000)))
    args = parser.parse_args(argv)
    if args.action == "prepare":
        prepare(args.dir, args.models_dir or Path("/zoo"))
        return 0
    return check(args.dir, args.models_dir or Path("/models"), args.port)


if __name__ == "__main__":
    sys.exit(main())
