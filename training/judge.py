"""Judge generated images with a published classifier: FID-F and conditional accuracy.

FID (Heusel et al. 2017) compares Inception features; a fashion item is better
seen by a fashion classifier, so Kerve uses the penultimate features (the input
of the last layer) of the published one and calls the result FID-F. Its floor,
two sets of real images, is reported beside it: FID-F values are comparable only
with the same judge and the same number of images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

import kerve_manifest
from training import evaluate, pipeline


class Judge:
    """A published classifier's features and predicted classes for uint8 images."""

    def __init__(self, version_dir: Path) -> None:
        self.manifest = kerve_manifest.read_manifest(version_dir)
        classifier = keras.saving.load_model(
            version_dir / kerve_manifest.MODEL_FILE, compile=False, safe_mode=True
        )
        outputs = [classifier.layers[-1].input, classifier.output]
        self.model = keras.Model(classifier.inputs, outputs)
        self.version_dir = version_dir

    def __call__(self, images: np.ndarray, batch_size: int = 250) -> tuple[np.ndarray, np.ndarray]:
        """(features float64 [n, d], predicted class [n]) of uint8 images [n, h, w, c]."""
        spec = self.manifest.input
        dataset = pipeline.make_dataset(
            images, np.zeros(len(images), np.int32), spec.height, spec.mean, spec.std, batch_size
        )
        features, probabilities = [], []
        for batch, _ in dataset:
            batch_features, batch_probabilities = self.model(batch, training=False)
            features.append(np.asarray(batch_features, np.float64))
            probabilities.append(np.asarray(batch_probabilities))
        return np.concatenate(features), np.argmax(np.concatenate(probabilities), axis=1)

    def class_indices(self, class_names: list[str]) -> np.ndarray:
        """The judge's index of each class name (case-insensitive)."""
        known = [label.lower() for label in self.manifest.labels]
        return np.array([known.index(name.lower()) for name in class_names])


def find(path: Path, class_names: list[str]) -> Judge | None:
    """The classifier at ``path`` (a version, or the newest under a model folder), if it
    knows every class; otherwise None, saying why."""
    version_dir = path
    if not (path / kerve_manifest.MANIFEST_FILE).exists():
        versions = kerve_manifest.list_versions(path)
        if not versions:
            print(f"no judge classifier at {path}: FID-F and conditional accuracy skipped")
            return None
        version_dir = path / str(versions[-1])
    judge = Judge(version_dir)
    known = {label.lower() for label in judge.manifest.labels}
    unknown = [name for name in class_names if name.lower() not in known]
    if unknown:
        print(f"{version_dir} does not know {unknown}: FID-F and conditional accuracy skipped")
        return None
    return judge


RealImages = tuple[tuple[np.ndarray, np.ndarray], np.ndarray, list[str]]


def reference_statistics(
    judge: Judge, data_key: str, cache_dir: Path, load_real: Callable[[], RealImages]
) -> dict[str, np.ndarray]:
    """Judge statistics of the real images: the reference set (images, labels) that
    generated images are compared with, and a second real set for the floor, as
    ``load_real`` gives them with the data's class names. Cached per judge file and
    ``data_key``: judging 20,000 real images takes minutes on a CPU."""
    model_file = judge.version_dir / kerve_manifest.MODEL_FILE
    key = f"{model_file.resolve()}:{model_file.stat().st_mtime_ns}:{data_key}"
    cache = cache_dir / f"gan-reference-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if cache.exists():
        with np.load(cache) as saved:
            return dict(saved)
    (reference_images, reference_labels), floor_images, class_names = load_real()
    reference_features, predicted = judge(reference_images)
    hits = predicted == judge.class_indices(class_names)[reference_labels]
    reference_mean, reference_cov = evaluate.feature_statistics(reference_features)
    floor_mean, floor_cov = evaluate.feature_statistics(judge(floor_images)[0])
    statistics = {
        "reference_mean": reference_mean,
        "reference_cov": reference_cov,
        "floor_mean": floor_mean,
        "floor_cov": floor_cov,
        "judge_accuracy": np.float64(hits.mean()),
        "reference_images": len(hits),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **statistics)
    return statistics


def quality(
    judge: Judge, images: np.ndarray, requested: np.ndarray, class_names: list[str], real: dict
) -> dict:
    """FID-F and conditional accuracy of generated uint8 images made for the classes
    ``requested`` (indices into ``class_names``), against ``reference_statistics``."""
    features, predicted = judge(images)
    hits = predicted == judge.class_indices(class_names)[requested]
    reference = (real["reference_mean"], real["reference_cov"])
    floor = (real["floor_mean"], real["floor_cov"])
    fid_f = evaluate.frechet_distance(evaluate.feature_statistics(features), reference)
    return {
        "fid_f": round(fid_f, 2),
        "fid_f_real_floor": round(evaluate.frechet_distance(floor, reference), 2),
        "conditional_accuracy": round(float(hits.mean()), 4),
        "conditional_accuracy_per_class": {
            name: round(float(hits[requested == index].mean()), 4)
            for index, name in enumerate(class_names)
        },
        "judge_accuracy_on_real": round(float(real["judge_accuracy"]), 4),
        "generated_images": len(images),
        "reference_images": int(real["reference_images"]),
        "judge": str(judge.version_dir),
    }
