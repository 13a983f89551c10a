"""Two-phase fine-tuning, shared by the scripts that train on a pretrained backbone.

Phase 1 trains the new layers on a frozen backbone; phase 2 unfreezes the top of
the backbone and continues at a lower learning rate, BatchNorm layers staying
frozen (keras-io's transfer-learning guide). With ``--weights none`` there is
nothing to preserve and the whole network trains from scratch in one phase.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


def unfreeze_top(backbone: keras.Model, fraction: float) -> int:
    """Make the top ``fraction`` of the backbone's layers trainable, BatchNorm excepted."""
    backbone.trainable = True
    first = int(len(backbone.layers) * (1 - fraction))
    for index, layer in enumerate(backbone.layers):
        frozen = index < first or isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not frozen
    return sum(int(np.prod(w.shape)) for w in backbone.trainable_weights)


def callbacks(work_dir: Path, patience: int) -> list[keras.callbacks.Callback]:
    return [
        keras.callbacks.ModelCheckpoint(
            work_dir / "best.weights.h5",
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1),
        keras.callbacks.CSVLogger(work_dir / "history.csv", append=True),
    ]


def two_phases(
    backbone: keras.Model,
    fit: Callable[[float, int], None],
    args: argparse.Namespace,
    history: dict[str, list[float]],
) -> list[int]:
    """Run phase 1 and phase 2 (or one from-scratch phase); the epochs where phases start.

    ``fit(learning_rate, epochs)`` compiles and fits the whole model; ``args`` holds
    the options of ``add_arguments``.
    """
    if args.weights == "none":
        total = args.head_epochs + args.epochs
        print(f"from scratch: the whole network trains, {total} epoch(s)")
        fit(args.learning_rate, total)
        return []
    print(f"phase 1: new layers only, backbone frozen, {args.head_epochs} epoch(s)")
    backbone.trainable = False
    fit(args.learning_rate, args.head_epochs)
    phase_starts = [len(history.get("loss", []))]
    trainable = unfreeze_top(backbone, args.unfreeze)
    print(
        f"phase 2: top {args.unfreeze:.0%} of the backbone unfrozen ({trainable:,} "
        f"weights), BatchNorm frozen, {args.epochs} epoch(s)"
    )
    fit(args.fine_tune_learning_rate, args.epochs)
    return phase_starts


def add_arguments(parser: argparse.ArgumentParser, backbone_names: list[str]) -> None:
    """The command-line options every fine-tuning script shares."""
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=backbone_names)
    parser.add_argument("--weights", default="imagenet", help="imagenet, none or a weights file")
    parser.add_argument("--head-epochs", type=int, default=1, help="phase 1 epochs")
    parser.add_argument("--epochs", type=int, default=3, help="phase 2 (fine-tuning) epochs")
    parser.add_argument(
        "--unfreeze",
        type=float,
        default=0.3,
        help="fraction of the backbone's top layers trained in phase 2",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=1e-3, help="phase 1 (and from-scratch) Adam rate"
    )
    parser.add_argument("--fine-tune-learning-rate", type=float, default=1e-4, help="phase 2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patience", type=int, default=3, help="early-stopping patience")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--verbose", type=int, default=1, help="Keras progress: 0, 1 or 2")


def provenance(args: argparse.Namespace, history: dict[str, list[float]]) -> dict:
    """The fine-tuning recipe as a manifest's provenance records it."""
    return {
        "backbone": args.backbone,
        "weights": args.weights,
        "image_size": args.image_size,
        "head_epochs": args.head_epochs,
        "fine_tune_epochs": args.epochs,
        "epochs_run": len(history.get("loss", [])),
        "unfreeze_fraction": args.unfreeze,
        "learning_rates": [args.learning_rate, args.fine_tune_learning_rate],
        "batch_size": args.batch_size,
        "seed": args.seed,
        "tensorflow_version": tf.__version__,
    }


def patch_training_provenance(
    args: argparse.Namespace, history: dict[str, list[float]], elapsed: float
) -> dict:
    """The recipe of a restorer trained on photo patches (denoiser, upscaler), as a
    manifest's provenance records it."""
    return {
        "patch_size": args.patch_size,
        "epochs_run": len(history.get("loss", [])),
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "tensorflow_version": tf.__version__,
        "training_seconds": round(elapsed),
    }


def record(history: dict[str, list[float]], result: keras.callbacks.History) -> None:
    for key, values in result.history.items():
        history.setdefault(key, []).extend(float(v) for v in values)
