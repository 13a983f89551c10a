"""Train a U-Net on a pretrained encoder to segment images, and publish it.

    python -m training.segmenter --backbone efficientnet_lite0 --weights imagenet|none|PATH \\
        --image-size 128 --train-scenes N --epochs N --out models/segmenter
    python -m training.segmenter --data DIR [--layout images-masks|voc] [--ignore-index 255] ...

The decoder (U-Net, Ronneberger et al. 2015) upsamples the encoder's last feature
map step by step, joining the encoder's feature map of the same resolution at
each step, and predicts a class per pixel. Loss: cross-entropy plus a soft Dice
term, which keeps small classes from drowning in background pixels; pixels at the
ignore index (VOC's object boundaries) count in neither. Training is two-phase
(see training/finetune.py). The data: by default the built-in scenes
(training/data/scenes.py: 11 classes, background + the Fashion-MNIST labels); with
``--data DIR`` the user's images and masks, in a layout training/data/segmentation_sets.py
describes (images/ + masks/ + labels.txt, or PASCAL VOC), checked before training.
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
from training.data import scenes, segmentation_sets  # noqa: E402
from training.data.image_files import DataError, read_mask, scale_mask  # noqa: E402

BOTTLENECK_FILTERS = 128  # the encoder's last feature map, squeezed
DECODER_FILTERS = (96, 64, 48, 24)  # at strides 16, 8, 4, 2
SKIP_FILTERS = (64, 48, 32, 16)  # each skip, projected before joining
DICE_WEIGHT = 1.0
SAMPLE_SCENES = 6  # rows in the overlay figure


# -- data ------------------------------------------------------------------------------
def make_scenes(args: argparse.Namespace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train"|"val"|"test": (images, masks)} generated for this run's seed."""
    counts = {"train": args.train_scenes, "val": args.val_scenes, "test": args.test_scenes}
    return {
        split: scenes.SceneGenerator(split, args.image_size, args.seed).arrays(count)
        for split, count in counts.items()
    }


def load_data(args: argparse.Namespace):
    """(arrays per split, class names, the user's data set or None for the scenes)."""
    if args.data is None:
        return make_scenes(args), list(scenes.CLASSES), None
    dataset = segmentation_sets.load(args.data, args.layout, args.ignore_index, args.seed)
    arrays = segmentation_sets.read_arrays(dataset, args.image_size)
    data = {name: (part.images, part.masks) for name, part in arrays.items()}
    return data, dataset.labels, dataset


# -- model -----------------------------------------------------------------------------
def build_model(backbone: keras.Model, num_classes: int, pretrained: bool) -> keras.Model:
    """U-Net: the encoder's skips at strides 2..16 joined on the way up from stride 32."""
    skip_names = backbones.feature_layers(backbone)
    encoder = keras.Model(
        backbone.input, [backbone.get_layer(name).output for name in skip_names], name="encoder"
    )
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    # training=False keeps a pretrained encoder's BatchNorm in inference mode.
    *skips, x = encoder(inputs, training=False) if pretrained else encoder(inputs)
    x = conv_bn_relu(x, BOTTLENECK_FILTERS, 1, "bottleneck")
    for skip, filters, skip_filters in zip(
        reversed(skips), DECODER_FILTERS, SKIP_FILTERS, strict=True
    ):
        stride = inputs.shape[1] // skip.shape[1]
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"up_{stride}")(x)
        # The encoder's skips are wide (96 to 672 channels); a 1x1 projection keeps
        # the 3x3 convolutions that follow cheap.
        skip = conv_bn_relu(skip, skip_filters, 1, f"skip_{stride}")
        x = keras.layers.Concatenate(name=f"join_{stride}")([x, skip])
        x = conv_bn_relu(x, filters, 3, f"decode_{stride}")
    x = keras.layers.Conv2D(num_classes, 1, name="class_logits")(x)  # stride 2
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="full_resolution")(x)
    outputs = keras.layers.Softmax(name="class_probabilities")(x)
    return keras.Model(inputs, outputs, name="segmenter")


def conv_bn_relu(x, filters: int, kernel_size: int, name: str):
    x = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=name)(x)
    # momentum 0.9: the moving statistics settle within the few hundred steps of a
    # short run (at 0.99 validation would see nearly untrained statistics).
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def dice_cross_entropy(num_classes: int, ignore_index: int | None = None):
    """Sparse cross-entropy plus (1 - soft Dice), Dice averaged over classes; pixels at
    ``ignore_index`` count in neither."""

    def loss(masks, probabilities):
        masks = keras.ops.reshape(masks, keras.ops.shape(probabilities)[:-1])
        masks = keras.ops.cast(masks, "int32")
        valid = known_pixels(masks, ignore_index)
        masks = keras.ops.where(valid > 0, masks, 0)  # any class: its weight is 0
        pixel_losses = keras.losses.sparse_categorical_crossentropy(masks, probabilities)
        cross_entropy = keras.ops.sum(pixel_losses * valid) / keras.ops.maximum(
            keras.ops.sum(valid), 1.0
        )
        valid = valid[..., None]
        truth = keras.ops.one_hot(masks, num_classes) * valid
        probabilities = probabilities * valid
        overlap = keras.ops.sum(truth * probabilities, axis=(0, 1, 2))
        total = keras.ops.sum(truth + probabilities, axis=(0, 1, 2))
        dice = (2 * overlap + 1.0) / (total + 1.0)
        return cross_entropy + DICE_WEIGHT * (1 - keras.ops.mean(dice))

    return loss


def known_pixels(masks, ignore_index: int | None):
    """1.0 where a pixel has a class, 0.0 at the ignore index."""
    if ignore_index is None:
        return keras.ops.ones_like(masks, dtype="float32")
    return keras.ops.cast(keras.ops.not_equal(masks, ignore_index), "float32")


def pixel_accuracy(ignore_index: int | None):
    """The share of known pixels whose most likely class is right (a Keras metric)."""

    def accuracy(masks, probabilities):
        masks = keras.ops.cast(
            keras.ops.reshape(masks, keras.ops.shape(probabilities)[:-1]), "int32"
        )
        valid = known_pixels(masks, ignore_index)
        right = keras.ops.cast(keras.ops.argmax(probabilities, axis=-1) == masks, "float32")
        return keras.ops.sum(right * valid) / keras.ops.maximum(keras.ops.sum(valid), 1.0)

    accuracy.__name__ = "accuracy"
    return accuracy


# -- evaluation --------------------------------------------------------------------------
def predict_masks(model: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    """Predicted class masks, batch by batch (the probabilities never pile up)."""
    batches = [np.argmax(model.predict_on_batch(images), axis=-1) for images, _ in dataset]
    return np.concatenate(batches).astype(np.uint8)


def known_confusion(truth, predicted, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """The pixel confusion matrix over the pixels that have a class (not the ignore index)."""
    truth, predicted = np.ravel(truth), np.ravel(predicted)
    if ignore_index is not None:
        known = truth != ignore_index
        truth, predicted = truth[known], predicted[known]
    return evaluate.confusion_matrix(truth, predicted, num_classes)


def full_size_confusion(predicted: np.ndarray, pairs, num_classes: int, ignore_index: int):
    """The confusion matrix at each test image's own size: the predicted mask scaled back
    with nearest neighbour, as the service answers, against the mask as the user drew it."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for mask_small, pair in zip(predicted, pairs, strict=True):
        truth = read_mask(pair.mask)
        scaled = scale_mask(mask_small, *truth.shape[::-1])
        matrix += known_confusion(truth, scaled, num_classes, ignore_index)
    return matrix


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    spec = backbones.BACKBONES[args.backbone]
    data, class_names, user_set = load_data(args)
    ignore_index = None if user_set is None else user_set.ignore_index
    source = "scenes" if user_set is None else f"{user_set.directory} ({user_set.layout})"
    print(f"{source} at {args.image_size}px: "
          + ", ".join(f"{k} {len(v[0])}" for k, v in data.items())
          + f"; {len(class_names)} classes")  # fmt: skip
    if user_set is not None:
        print(f"split: {user_set.split_source}")
        report_unseen_classes(data["train"][1], class_names)

    def dataset(split: str, training: bool = False) -> tf.data.Dataset:
        images, masks = data[split]
        return pipeline.make_segmentation_dataset(
            images, masks, spec.mean, spec.std, args.batch_size, training, args.seed
        )

    train, val, test = dataset("train", training=True), dataset("val"), dataset("test")
    backbone = backbones.build_backbone(args.backbone, args.image_size, args.weights)
    num_classes = len(class_names)
    model = build_model(backbone, num_classes, pretrained=args.weights != "none")
    work_dir = Path(tempfile.mkdtemp(prefix="kerve-segmenter-"))
    history: dict[str, list[float]] = {}

    def fit(learning_rate: float, epochs: int) -> None:
        if epochs <= 0:
            return
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=dice_cross_entropy(num_classes, ignore_index),
            metrics=[
                keras.metrics.MeanIoU(
                    num_classes, ignore_class=ignore_index, sparse_y_pred=False, name="mean_iou"
                ),
                "accuracy" if ignore_index is None else pixel_accuracy(ignore_index),
            ],
        )
        result = model.fit(
            train,
            validation_data=val,
            epochs=epochs,
            callbacks=finetune.callbacks(work_dir, args.patience),
            verbose=args.verbose,
        )
        finetune.record(history, result)

    phase_starts = finetune.two_phases(backbone, fit, args, history)

    predicted = predict_masks(model, test)
    test_images, test_masks = data["test"]
    if user_set is None:
        matrix = known_confusion(test_masks, predicted, num_classes, None)
    else:  # at each image's own size, as served
        test_pairs = user_set.splits["test"]
        matrix = full_size_confusion(predicted, test_pairs, num_classes, ignore_index)
    report = evaluate.segmentation_report(matrix, class_names)
    val_matrix = known_confusion(
        data["val"][1], predict_masks(model, val), num_classes, ignore_index
    )
    val_report = evaluate.segmentation_report(val_matrix, class_names)
    plots.learning_curves(history, work_dir / "learning_curves.png", phase_starts)
    shown_truth = test_masks[:SAMPLE_SCENES]
    if ignore_index is not None:  # shown as unlabelled
        shown_truth = np.where(shown_truth == ignore_index, 0, shown_truth)
    plots.segmentation_samples(
        test_images[:SAMPLE_SCENES],
        shown_truth,
        predicted[:SAMPLE_SCENES],
        class_names,
        work_dir / "test_samples.png",
    )
    elapsed = time.perf_counter() - started
    counts = {split: len(masks) for split, (_, masks) in data.items()}
    manifest = kerve_manifest.SegmentationManifest(
        input=kerve_manifest.InputSpec(
            height=args.image_size, width=args.image_size, channels=3, mean=spec.mean, std=spec.std
        ),
        labels=class_names,
        batching=kerve_manifest.BatchingSpec(max_batch_size=16),
        description=describe(user_set, class_names)
        + f"; U-Net on {args.backbone} ({args.weights})",
        metrics={
            "test_mean_iou": report["mean_iou"],
            "test_pixel_accuracy": report["pixel_accuracy"],
            "test_per_class_iou": report["per_class_iou"],
            "val_mean_iou": val_report["mean_iou"],
            ("test_scenes" if user_set is None else "test_images"): counts["test"],
            "confusion_matrix": matrix.tolist(),
        },
        provenance={
            "script": "training.segmenter",
            **data_provenance(user_set, counts),
            **finetune.provenance(args, history),
            "training_seconds": round(elapsed),
        },
    )
    artifacts = {
        name: work_dir / name for name in ("learning_curves.png", "test_samples.png", "history.csv")
    }
    path = export.publish(model, manifest, args.out.parent, args.out.name, extra_files=artifacts)
    print_summary(path, report, val_report, elapsed)
    return path


def report_unseen_classes(train_masks: np.ndarray, class_names: list[str]) -> None:
    """Say which classes no training pixel has: the model cannot learn them."""
    counts = np.bincount(train_masks.ravel(), minlength=256)[: len(class_names)]
    unseen = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
    if unseen:
        print(f"warning: no training pixel of {len(unseen)} class(es): {', '.join(unseen[:10])}")


def describe(user_set, class_names: list[str]) -> str:
    """What the model knows, in one line a user meets in GET /v1/models and the page."""
    if user_set is None:
        return (
            "finds Fashion-MNIST clothing items pasted on photos (synthetic Kerve scenes), "
            "not the objects of your photos"
        )
    shown = ", ".join(class_names[:6]) + (", ..." if len(class_names) > 6 else "")
    return f"segments the {len(class_names)} classes of {user_set.directory} ({shown})"


def data_provenance(user_set, counts: dict[str, int]) -> dict:
    if user_set is None:
        return {"dataset": "kerve scenes (training/data/scenes.py)", "scenes": counts}
    return {
        "dataset": str(user_set.directory),
        "layout": user_set.layout,
        "split": user_set.split_source,
        "images": counts,
        "ignore_index": user_set.ignore_index,
        "test_metrics_at": "each test image's own size (predicted mask scaled back, nearest)",
    }


def print_summary(path: Path, report: dict, val_report: dict, elapsed: float) -> None:
    worst = sorted(report["per_class_iou"].items(), key=lambda item: item[1])[:3]
    print("\n" + "=" * 72)
    print(f"published      {path}")
    print(
        f"test mean IoU  {report['mean_iou']:.4f}   pixel accuracy "
        f"{report['pixel_accuracy']:.4f}   (validation mean IoU {val_report['mean_iou']:.4f})"
    )
    print("weakest        " + ", ".join(f"{name} IoU {iou:.2f}" for name, iou in worst))
    print(f"took           {elapsed / 60:.1f} min; curves and sample overlays beside the model")
    print("=" * 72)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, help="a folder of your images and masks (default: built-in scenes)"
    )
    parser.add_argument(
        "--layout", choices=segmentation_sets.LAYOUTS, help="of --data (default: detected)"
    )
    parser.add_argument(
        "--ignore-index", type=int, default=255,
        help="the mask value of unlabelled pixels, left out of loss and metrics (--data)",
    )  # fmt: skip
    finetune.add_arguments(parser, sorted(backbones.BACKBONES))
    parser.add_argument("--image-size", type=int, default=128, help="a multiple of 32")
    parser.add_argument("--train-scenes", type=int, default=4000, help="built-in scenes only")
    parser.add_argument("--val-scenes", type=int, default=500, help="built-in scenes only")
    parser.add_argument("--test-scenes", type=int, default=1000, help="built-in scenes only")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("models/segmenter"),
        help="the model's folder in the repository: models/<name>",
    )
    parser.set_defaults(batch_size=32, unfreeze=0.5)
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        main()
    except DataError as error:  # a broken data set: the problems, not a traceback
        raise SystemExit(f"error: {error}") from None
