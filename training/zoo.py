"""Build the demo model zoo that `make serve` serves: `python -m training.zoo`.

    python -m training.zoo [--profile fast|full] [--models-dir models] [--if-missing]

fast: every model in minutes on 2 CPU cores (a subset and few epochs);
full: the recipes behind the quality figures in docs/MODELS.md (an hour or more).
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

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
    # after fashion-classifier: it judges the generator (FID-F, conditional accuracy)
    "generator": ("training.gan", {"fast": ["--epochs", "1"], "full": ["--epochs", "16"]}),
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["fast", "full"], default="fast")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="skip models that already have a published version",
    )
    args = parser.parse_args(argv)
    for number, (name, (module, profiles)) in enumerate(ZOO.items(), start=1):
        out = args.models_dir / name
        if args.if_missing and kerve_manifest.list_versions(out):
            print(f"[{number}/{len(ZOO)}] {name}: already published, skipped")
            continue
        print(f"[{number}/{len(ZOO)}] {name} ({args.profile} profile) ...", flush=True)
        started = time.perf_counter()
        script = importlib.import_module(module)
        path = script.main([*profiles[args.profile], "--out", str(out)])
        print(f"[{number}/{len(ZOO)}] {name}: {path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
