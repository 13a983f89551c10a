"""Train a U-Net on a pretrained encoder to segment scenes, and publish it.

    python -m training.segmenter --backbone efficientnet_lite0 --weights imagenet|none|PATH \\
        --image-size 128 --train-scenes N --epochs N --out models/segmenter

The decoder (U-Net, Ronneberger et al. 2015) upsamples the encoder's last feature
map step by step, joining the encoder's feature map of the same resolution at
each step, and predicts 11 classes (background + the Fashion-MNIST labels) per
pixel. Loss: cross-entropy plus a soft Dice term, which keeps the small item
classes from drowning in background pixels. Training is two-phase (see
training/finetune.py); scenes come from training/data/scenes.py.
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
from training.data import scenes  # noqa: E402

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


def dice_cross_entropy(num_classes: int):
    """Sparse cross-entropy plus (1 - soft Dice), Dice averaged over classes."""

    def loss(masks, probabilities):
        masks = keras.ops.reshape(masks, keras.ops.shape(probabilities)[:-1])
        masks = keras.ops.cast(masks, "int32")
        cross_entropy = keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(masks, probabilities)
        )
        truth = keras.ops.one_hot(masks, num_classes)
        overlap = keras.ops.sum(truth * probabilities, axis=(0, 1, 2))
        total = keras.ops.sum(truth + probabilities, axis=(0, 1, 2))
        dice = (2 * overlap + 1.0) / (total + 1.0)
        return cross_entropy + DICE_WEIGHT * (1 - keras.ops.mean(dice))

    return loss


# -- evaluation --------------------------------------------------------------------------
def predict_masks(model: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    """Predicted class masks, batch by batch (the probabilities never pile up)."""
    batches = [np.argmax(model.predict_on_batch(images), axis=-1) for images, _ in dataset]
    return np.concatenate(batches).astype(np.uint8)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    spec = backbones.BACKBONES[args.backbone]
    data = make_scenes(args)
    print(f"scenes {args.image_size}px: " + ", ".join(f"{k} {len(v[0])}" for k, v in data.items()))

    def dataset(split: str, training: bool = False) -> tf.data.Dataset:
        images, masks = data[split]
        return pipeline.make_segmentation_dataset(
            images, masks, spec.mean, spec.std, args.batch_size, training, args.seed
        )

    train, val, test = dataset("train", training=True), dataset("val"), dataset("test")
    backbone = backbones.build_backbone(args.backbone, args.image_size, args.weights)
    num_classes = len(scenes.CLASSES)
    model = build_model(backbone, num_classes, pretrained=args.weights != "none")
    work_dir = Path(tempfile.mkdtemp(prefix="kerve-segmenter-"))
    history: dict[str, list[float]] = {}

    def fit(learning_rate: float, epochs: int) -> None:
        if epochs <= 0:
            return
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=dice_cross_entropy(num_classes),
            metrics=[
                keras.metrics.MeanIoU(num_classes, sparse_y_pred=False, name="mean_iou"),
                "accuracy",
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
    test_masks = data["test"][1]
    matrix = evaluate.confusion_matrix(test_masks.ravel(), predicted.ravel(), num_classes)
    report = evaluate.segmentation_report(matrix, scenes.CLASSES)
    val_report = evaluate.segmentation_report(
        evaluate.confusion_matrix(
            data["val"][1].ravel(), predict_masks(model, val).ravel(), num_classes
        ),
        scenes.CLASSES,
    )
    plots.learning_curves(history, work_dir / "learning_curves.png", phase_starts)
    plots.segmentation_samples(
        data["test"][0][:SAMPLE_SCENES],
        test_masks[:SAMPLE_SCENES],
        predicted[:SAMPLE_SCENES],
        scenes.CLASSES,
        work_dir / "test_samples.png",
    )
    elapsed = time.perf_counter() - started
    manifest = kerve_manifest.SegmentationManifest(
        input=kerve_manifest.InputSpec(
            height=args.image_size, width=args.image_size, channels=3, mean=spec.mean, std=spec.std
        ),
        labels=scenes.CLASSES,
        batching=kerve_manifest.BatchingSpec(max_batch_size=16),
        description="finds Fashion-MNIST clothing items pasted on photos (synthetic Kerve "
        f"scenes), not the objects of your photos; U-Net on {args.backbone} ({args.weights})",
        metrics={
            "test_mean_iou": report["mean_iou"],
            "test_pixel_accuracy": report["pixel_accuracy"],
            "test_per_class_iou": report["per_class_iou"],
            "val_mean_iou": val_report["mean_iou"],
            "test_scenes": len(test_masks),
            "confusion_matrix": matrix.tolist(),
        },
        provenance={
            "script": "training.segmenter",
            "dataset": "kerve scenes (training/data/scenes.py)",
            "scenes": {split: len(masks) for split, (_, masks) in data.items()},
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
    finetune.add_arguments(parser, sorted(backbones.BACKBONES))
    parser.add_argument("--image-size", type=int, default=128, help="a multiple of 32")
    parser.add_argument("--train-scenes", type=int, default=4000)
    parser.add_argument("--val-scenes", type=int, default=500)
    parser.add_argument("--test-scenes", type=int, default=1000)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("models/segmenter"),
        help="the model's folder in the repository: models/<name>",
    )
    parser.set_defaults(batch_size=32, unfreeze=0.5)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
