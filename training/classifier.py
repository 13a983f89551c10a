"""Fine-tune a pretrained CNN to classify images and publish it as a repository version.

    python -m training.classifier --data fashion_mnist|DIR --backbone efficientnet_lite0 \\
        --weights imagenet|none|PATH --image-size 96 --epochs N --out models/<name>

Two phases, as in keras-io's transfer-learning guide: (1) train a new head on the
frozen backbone, (2) unfreeze the top of the backbone and continue at a lower
learning rate, BatchNorm layers staying frozen (and in inference mode). With
``--weights none`` there is nothing to preserve: the whole network trains from
scratch, BatchNorm active, for the same total number of epochs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerve_manifest  # noqa: E402
from training import backbones, evaluate, export, finetune, pipeline, plots  # noqa: E402
from training.data import fashion_mnist, folders, splits  # noqa: E402

DROPOUT = 0.2


# -- data ------------------------------------------------------------------------------
def make_splits(data: str, image_size: int, sizes: dict[str, int | None], seed: int):
    """{"train"|"val"|"test": (images, labels)} and the class names.

    Fashion-MNIST keeps its official 10,000-image test set and holds 15% of its
    training set out for validation; a class-folder tree is split 70/15/15.
    """
    if data == "fashion_mnist":
        train_images, train_labels = fashion_mnist.load("train")
        test = fashion_mnist.load("test")
        train_index, val_index = splits.split_indices(train_labels, (0.85, 0.15), seed)
        parts = {
            "train": (train_images[train_index], train_labels[train_index]),
            "val": (train_images[val_index], train_labels[val_index]),
            "test": test,
        }
        class_names = fashion_mnist.LABELS
    else:
        images, labels, class_names = folders.load(Path(data), image_size)
        indices = splits.split_indices(labels, seed=seed)
        parts = {
            name: (images[index], labels[index])
            for name, index in zip(("train", "val", "test"), indices, strict=True)
        }
    for name, size in sizes.items():  # stratified subsets where sizes were given
        keep = splits.subsample(parts[name][1], size, seed)
        parts[name] = (parts[name][0][keep], parts[name][1][keep])
    return parts, list(class_names)


# -- model -----------------------------------------------------------------------------
def build_model(backbone: keras.Model, num_classes: int, pretrained: bool) -> keras.Model:
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    # training=False keeps a pretrained backbone's BatchNorm in inference mode even
    # once unfrozen, so fine-tuning does not wreck its statistics.
    features = backbone(inputs, training=False) if pretrained else backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = keras.layers.Dropout(DROPOUT, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="classifier")


# -- training ------------------------------------------------------------------------------
def fit_phase(model, learning_rate, epochs, train, val, work_dir, args, weights, history):
    if epochs <= 0:
        return
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    result = model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        class_weight=weights,
        callbacks=finetune.callbacks(work_dir, args.patience),
        verbose=args.verbose,
    )
    finetune.record(history, result)


# -- evaluation and export -----------------------------------------------------------------
def predict_labels(model: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    return np.argmax(model.predict(dataset, verbose=0), axis=1)


def data_description(data: str, class_names: list[str]) -> str:
    """What the model knows, in one line a user meets in GET /v1/models and the page."""
    if data == "fashion_mnist":
        return (
            "knows only Fashion-MNIST's 10 kinds of clothing, small grey pictures on black; "
            "not photos (the imagenet-classifier knows photos)"
        )
    return f"knows only the {len(class_names)} classes of {data}"


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    spec = backbones.BACKBONES[args.backbone]
    limits = {"train": args.train_size, "val": args.val_size, "test": args.test_size}
    parts, class_names = make_splits(args.data, args.image_size, limits, args.seed)
    sizes = {name: len(labels) for name, (_, labels) in parts.items()}
    print(f"data {args.data}: {sizes} images, {len(class_names)} classes")

    def dataset(name: str, training: bool = False) -> tf.data.Dataset:
        images, labels = parts[name]
        return pipeline.make_dataset(
            images,
            labels,
            args.image_size,
            spec.mean,
            spec.std,
            args.batch_size,
            training=training,
            seed=args.seed,
        )

    train, val, test = dataset("train", training=True), dataset("val"), dataset("test")
    weights = pipeline.class_weights(parts["train"][1], len(class_names))
    backbone = backbones.build_backbone(args.backbone, args.image_size, args.weights)
    pretrained = args.weights != "none"
    model = build_model(backbone, len(class_names), pretrained)
    work_dir = Path(tempfile.mkdtemp(prefix="kerve-classifier-"))
    history: dict[str, list[float]] = {}

    def fit(learning_rate: float, epochs: int) -> None:
        fit_phase(model, learning_rate, epochs, train, val, work_dir, args, weights, history)

    phase_starts = finetune.two_phases(backbone, fit, args, history)

    test_labels = parts["test"][1]
    report = evaluate.classification_report(test_labels, predict_labels(model, test), class_names)
    val_report = evaluate.classification_report(
        parts["val"][1], predict_labels(model, val), class_names
    )
    plots.learning_curves(history, work_dir / "learning_curves.png", phase_starts)
    plots.confusion(np.array(report["confusion_matrix"]), class_names, work_dir / "confusion.png")
    elapsed = time.perf_counter() - started
    manifest = kerve_manifest.ClassificationManifest(
        input=kerve_manifest.InputSpec(
            height=args.image_size,
            width=args.image_size,
            channels=3,
            mean=spec.mean,
            std=spec.std,
        ),
        labels=class_names,
        description=data_description(args.data, class_names)
        + f"; {args.backbone} ({args.weights}) fine-tuned",
        metrics={
            "test_accuracy": report["accuracy"],
            "test_macro_f1": report["macro_f1"],
            "val_accuracy": val_report["accuracy"],
            "test_images": int(len(test_labels)),
            "per_class": report["per_class"],
            "confusion_matrix": report["confusion_matrix"],
        },
        provenance={
            "script": "training.classifier",
            "dataset": args.data,
            "split_sizes": sizes,
            **finetune.provenance(args, history),
            "training_seconds": round(elapsed),
        },
    )
    artifacts = {
        name: work_dir / name for name in ("learning_curves.png", "confusion.png", "history.csv")
    }
    path = export.publish(model, manifest, args.out.parent, args.out.name, extra_files=artifacts)
    print_summary(path, report, val_report, elapsed)
    return path


def print_summary(path: Path, report: dict, val_report: dict, elapsed: float) -> None:
    worst = sorted(report["per_class"].items(), key=lambda item: item[1]["f1"])[:3]
    print("\n" + "=" * 72)
    print(f"published      {path}")
    print(
        f"test accuracy  {report['accuracy']:.4f}   macro F1 {report['macro_f1']:.4f}   "
        f"(validation accuracy {val_report['accuracy']:.4f})"
    )
    print("weakest        " + ", ".join(f"{name} F1 {m['f1']:.2f}" for name, m in worst))
    print(f"took           {elapsed / 60:.1f} min; curves and confusion matrix beside the model")
    print("=" * 72)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion_mnist", help="fashion_mnist or a folder")
    finetune.add_arguments(parser, sorted(backbones.BACKBONES))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train-size", type=int, help="a stratified subset of the training split")
    parser.add_argument("--val-size", type=int, help="a stratified validation subset")
    parser.add_argument("--test-size", type=int, help="a stratified test subset")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("models/fashion-classifier"),
        help="the model's folder in the repository: models/<name>",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
