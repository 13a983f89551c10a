"""Publish an UNTRAINED classifier so that a fresh checkout has something to serve.

This is scaffolding until the classifier training script lands: the network has
random weights, its predictions are meaningless, and its manifest says so. It
exercises the whole serving path (decode, resize, batch, top-k) honestly.

    python -m training.untrained_classifier --models-dir models [--if-missing]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras

import kerve_manifest
from training import export

NAME = "classifier"
IMAGE_SIZE = 224
# Fashion-MNIST's classes: the labels the trained classifier will have.
LABELS = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]


def build_model(image_size: int = IMAGE_SIZE, num_classes: int = len(LABELS)) -> keras.Model:
    """A small CNN with random weights.

    Shallow on purpose: in a deep random network (an untrained MobileNetV2 was
    tried) activations vanish and every image gets the same scores, which hides
    whether the serving path responds to its input at all.
    """
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="untrained_cnn")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing if any classification model is already published",
    )
    args = parser.parse_args(argv)
    if args.if_missing and _has_classifier(args.models_dir):
        print(f"a classification model is already in {args.models_dir}; nothing to do")
        return
    keras.utils.set_random_seed(0)
    manifest = kerve_manifest.Manifest(
        task="classification",
        input=kerve_manifest.InputSpec.scaled(IMAGE_SIZE, IMAGE_SIZE, 3, "symmetric"),
        labels=LABELS,
        description="UNTRAINED small CNN with random weights: a placeholder for "
        "exercising the service. Its predictions are meaningless.",
        provenance={"trained": False, "weights": "random initialisation (seed 0)"},
    )
    path = export.publish(build_model(), manifest, args.models_dir, NAME)
    print(f"published an untrained classifier at {path}")


def _has_classifier(models_dir: Path) -> bool:
    for manifest_path in Path(models_dir).glob(f"*/*/{kerve_manifest.MANIFEST_FILE}"):
        try:
            if kerve_manifest.read_manifest(manifest_path.parent).task == "classification":
                return True
        except (OSError, ValueError):
            continue
    return False


if __name__ == "__main__":
    main()
