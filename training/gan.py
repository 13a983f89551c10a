"""Train a class-conditional DCGAN and publish its generator.

    python -m training.gan --data fashion_mnist|DIR --arch dcgan --latent-dim 128 \\
        --epochs N --out models/generator [--init models/generator/<version>]

The generator maps (latent vector, class) to an image; the discriminator scores
(image, class) pairs. Both see the class through a learned embedding: the
generator concatenates it to the latent vector, the discriminator projects its
features on it (Miyato & Koyama 2018). Training is keras-io's conditional GAN: a
``keras.Model`` subclass whose ``train_step`` updates the discriminator, then the
generator, with one-sided label smoothing on the real images. A callback saves a
sample grid per epoch and stops the run if the discriminator wins outright
(collapse). ``--init`` loads a published generator and the discriminator saved
beside it and fine-tunes both at a lower learning rate, on a subset of classes
(``--classes``) or on a folder of new images whose classes are among the
generator's. Quality is judged by a published classifier (``--judge``): FID-F,
the Fréchet distance of its penultimate features between generated and test
images, and how often it recognises the requested class.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerve_manifest  # noqa: E402
from training import export, finetune, judge, pipeline, plots  # noqa: E402
from training.data import fashion_mnist, folders  # noqa: E402

EMBEDDING_DIM = 50
DISCRIMINATOR_FILE = "discriminator.keras"
GRID_SEED = 2024  # the per-epoch sample grids use the same latents throughout
COLLAPSE_PROBABILITY = 0.05  # D's mean score for fakes below this ...
EVAL_SEED = 7


# -- data ------------------------------------------------------------------------------
def load_images(data: str, image_size: int, channels: int):
    """(uint8 images [n, h, w, c], labels [n], class names) to learn from."""
    if data == "fashion_mnist":
        images, labels = fashion_mnist.load("train")
        return images[..., np.newaxis], labels, list(fashion_mnist.LABELS)
    images, labels, class_names = folders.load(Path(data), image_size)
    if channels == 1:
        images = np.round(images.astype(np.float32) @ [0.299, 0.587, 0.114])[..., None]
    return images.astype(np.uint8), labels, class_names


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int):
    """Shuffled batches of (images scaled to [-1, 1], labels [b, 1] int32)."""
    scaled = (images.astype(np.float32) - 127.5) / 127.5
    dataset = tf.data.Dataset.from_tensor_slices((scaled, labels.astype(np.int32)[:, None]))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(pipeline.AUTOTUNE)


# -- model -----------------------------------------------------------------------------
def build_generator(latent_dim: int, num_classes: int, image_size: int, channels: int, width: int):
    """(latent, label) -> image in [-1, 1]: dense to a quarter-size map, two up-convolutions."""
    if image_size % 4:
        raise ValueError(f"the image size must be a multiple of 4, got {image_size}")
    base = image_size // 4
    latent = keras.Input((latent_dim,), name="latent")
    label = keras.Input((1,), dtype="int32", name="label")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(num_classes, EMBEDDING_DIM)(label))
    x = keras.layers.Concatenate()([latent, embedded])
    x = keras.layers.Dense(base * base * 4 * width, use_bias=False)(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Reshape((base, base, 4 * width))(x)
    for filters in (2 * width, width):
        x = keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    image = keras.layers.Conv2D(channels, 3, padding="same", activation="tanh", name="image")(x)
    return keras.Model([latent, label], image, name="generator")


def build_discriminator(num_classes: int, image_size: int, channels: int, width: int):
    """(image, label) -> (realness logit, class logits).

    Realness is a linear score of the conv features plus their projection on the
    class's embedding (Miyato & Koyama 2018); the class logits are an auxiliary
    classifier (AC-GAN, Odena et al. 2017) that the generator learns to satisfy.
    """
    image = keras.Input((image_size, image_size, channels), name="image")
    label = keras.Input((1,), dtype="int32", name="label")
    x = image
    for filters in (width, 2 * width):
        x = keras.layers.Conv2D(filters, 4, strides=2, padding="same")(x)
        x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.Conv2D(4 * width, 3, padding="same")(x)
    features = keras.layers.Flatten()(keras.layers.LeakyReLU(0.2)(x))
    features = keras.layers.Dropout(0.3)(features)
    dim = features.shape[-1]
    class_vector = keras.layers.Flatten()(keras.layers.Embedding(num_classes, dim)(label))
    projection = keras.layers.Dot(axes=1)([features, class_vector])
    logit = keras.layers.Add(name="logit")([keras.layers.Dense(1)(features), projection])
    classes = keras.layers.Dense(num_classes, name="classes")(features)
    return keras.Model([image, label], [logit, classes], name="discriminator")


class ConditionalGAN(keras.Model):
    """One discriminator step, then one generator step, per batch of real images."""

    def __init__(
        self, generator, discriminator, latent_dim: int, smoothing: float, seed: int,
        class_weight: float = 1.0,
    ):  # fmt: skip
        super().__init__()
        self.class_weight = class_weight  # of the auxiliary classification losses
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim
        self.real_target = 1.0 - smoothing  # one-sided label smoothing (Salimans et al. 2016)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("d_loss", "g_loss", "d_real", "d_fake", "d_class_loss")
        }

    def compile(self, d_optimizer, g_optimizer, jit_compile="auto") -> None:
        super().compile(jit_compile=jit_compile)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer

    @property
    def metrics(self):
        return list(self.trackers.values())

    def train_step(self, data):
        images, labels = data
        batch_size = tf.shape(images)[0]
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        cce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        latent = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        fakes = self.generator([latent, labels], training=True)
        with tf.GradientTape() as tape:
            real_logits, real_classes = self.discriminator([images, labels], training=True)
            fake_logits, _ = self.discriminator([fakes, labels], training=True)
            real_loss = bce(tf.fill(tf.shape(real_logits), self.real_target), real_logits)
            # The classifier learns from real images only, so it cannot ease the
            # generator's task by learning its mistakes.
            class_loss = cce(labels, real_classes)
            d_loss = real_loss + bce(tf.zeros_like(fake_logits), fake_logits)
            d_loss += self.class_weight * class_loss
        weights = self.discriminator.trainable_weights
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, weights), weights, strict=True))

        latent = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            fakes = self.generator([latent, labels], training=True)
            logits, classes = self.discriminator([fakes, labels])
            g_loss = bce(tf.ones_like(logits), logits)  # non-saturating generator loss
            g_loss += self.class_weight * cce(labels, classes)
        weights = self.generator.trainable_weights
        self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, weights), weights, strict=True))

        for name, value in (
            ("d_loss", d_loss),
            ("g_loss", g_loss),
            ("d_real", tf.reduce_mean(tf.sigmoid(real_logits))),
            ("d_fake", tf.reduce_mean(tf.sigmoid(fake_logits))),
            ("d_class_loss", class_loss),
        ):
            self.trackers[name].update_state(value)
        # The last step's own score for fakes, unaveraged, for the collapse watch.
        fake_score = tf.reduce_mean(tf.sigmoid(fake_logits))
        return {**{n: t.result() for n, t in self.trackers.items()}, "d_fake_step": fake_score}


class CollapseWatch(keras.callbacks.Callback):
    """Stop when the discriminator rejects every fake for ``patience`` steps in a row.

    Then the generator's gradients vanish and it no longer learns: the GAN has
    collapsed. ``self.collapsed`` records the step it was detected at.
    """

    def __init__(self, patience: int) -> None:
        super().__init__()
        self.patience = patience
        self.streak = 0
        self.step = 0
        self.collapsed: int | None = None

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.step += 1
        fake_score = float(logs["d_fake_step"])
        self.streak = self.streak + 1 if fake_score < COLLAPSE_PROBABILITY else 0
        if self.streak >= self.patience and self.collapsed is None:
            self.collapsed = self.step
            print(
                f"\nCOLLAPSE: the discriminator scored fakes below {COLLAPSE_PROBABILITY} for "
                f"{self.patience} steps in a row (step {self.step}); stopping"
            )
            self.model.stop_training = True


class SampleGrids(keras.callbacks.Callback):
    """A grid per epoch, one row per class, the same latents every time."""

    def __init__(self, generator, class_names, latent_dim: int, folder: Path, per_class: int = 10):
        super().__init__()
        self.generator, self.class_names, self.folder = generator, class_names, folder
        self.latent, self.labels = grid_inputs(len(class_names), latent_dim, per_class)

    def on_epoch_end(self, epoch, logs=None) -> None:
        images = to_uint8(self.generator.predict_on_batch([self.latent, self.labels]))
        path = self.folder / f"samples_epoch{epoch + 1:03d}.png"
        plots.sample_grid(images, self.class_names, path)


class JudgedEpochs(keras.callbacks.Callback):
    """The judge's conditional accuracy on fresh samples at each epoch's end, recorded
    in the history (and the learning curves) as ``conditional_accuracy``."""

    def __init__(self, judged: judge.Judge, class_names: list[str], latent_dim: int, count: int):
        super().__init__()
        self.judge, self.latent_dim = judged, latent_dim
        self.requested = np.arange(count) % len(class_names)
        self.expected = judged.class_indices(class_names)[self.requested]

    def on_epoch_end(self, epoch, logs=None) -> None:
        images = generate(self.model.generator, self.requested, self.latent_dim, EVAL_SEED + 1)
        logs["conditional_accuracy"] = float(np.mean(self.judge(images)[1] == self.expected))


def grid_inputs(num_classes: int, latent_dim: int, per_class: int):
    rng = np.random.default_rng(GRID_SEED)
    latent = rng.standard_normal((num_classes * per_class, latent_dim), dtype=np.float32)
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)[:, None]
    return latent, labels


def to_uint8(images) -> np.ndarray:
    """Generator output in [-1, 1] as uint8 pixels, as the service rounds them."""
    return np.clip(np.round(np.asarray(images) * 127.5 + 127.5), 0, 255).astype(np.uint8)


# -- evaluation ------------------------------------------------------------------------
def generate(generator, labels: np.ndarray, latent_dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((len(labels), latent_dim), dtype=np.float32)
    inputs = [latent, labels.astype(np.int32)[:, None]]
    return to_uint8(generator.predict(inputs, batch_size=500, verbose=0))


def real_images(args, channels: int) -> judge.RealImages:
    """What generated images are compared with: Fashion-MNIST's test set, and as many
    training images for the floor (a folder is compared with itself)."""
    images, labels, class_names = load_images(args.data, args.image_size, channels)
    reference = (images, labels)
    if args.data == "fashion_mnist":
        test_images, test_labels = fashion_mnist.load("test")
        reference = (test_images[..., np.newaxis], test_labels)
    order = np.random.default_rng(EVAL_SEED).permutation(len(images))[: args.eval_images]
    return reference, images[order], class_names


def measure_quality(generator, found: judge.Judge, class_names, channels: int, args) -> dict:
    """FID-F and conditional accuracy of ``--eval-images`` images, as many per class."""
    key = f"{args.data}:{args.image_size}:{args.eval_images}"
    real = judge.reference_statistics(
        found, key, args.cache_dir, lambda: real_images(args, channels)
    )
    requested = np.arange(args.eval_images) % len(class_names)
    images = generate(generator, requested, args.latent_dim, EVAL_SEED)
    return judge.quality(found, images, requested, class_names, real)


# -- training and export ---------------------------------------------------------------
def label_key(name: str) -> str:
    """How a class name is matched: case-insensitively, "/" (not allowed in a folder
    name) written as "-", so a folder "t-shirt-top" is the label "t-shirt/top"."""
    return name.lower().replace("/", "-")


def restrict(images, labels, data_classes, label_space, keep: list[str] | None):
    """Map the data's classes into the generator's label space; keep only ``keep``."""
    index = {label_key(name): i for i, name in enumerate(label_space)}
    missing = [n for n in data_classes if label_key(n) not in index]
    if missing:
        raise ValueError(f"classes {missing} are not among the generator's labels {label_space}")
    labels = np.array([index[label_key(n)] for n in data_classes])[labels]
    if keep:
        unknown = [n for n in keep if label_key(n) not in index]
        if unknown:
            raise ValueError(f"--classes {unknown} are not among {label_space}")
        chosen = np.isin(labels, [index[label_key(n)] for n in keep])
        images, labels = images[chosen], labels[chosen]
    if len(images) == 0:
        raise ValueError("no training images left")
    return images, labels


def load_networks(args, class_names: list[str], channels: int):
    """(generator, discriminator, label names): new ones, or those published at ``--init``."""
    if not args.init:
        num_classes, size = len(class_names), args.image_size
        generator = build_generator(args.latent_dim, num_classes, size, channels, args.width)
        discriminator = build_discriminator(num_classes, size, channels, args.width)
        return generator, discriminator, class_names
    manifest = kerve_manifest.read_manifest(args.init)
    generator, discriminator = (
        keras.saving.load_model(args.init / name, compile=False, safe_mode=True)
        for name in (kerve_manifest.MODEL_FILE, DISCRIMINATOR_FILE)
    )
    args.latent_dim = manifest.generation.latent_dim
    print(f"fine-tuning {args.init}: {generator.count_params():,} + "
          f"{discriminator.count_params():,} weights")  # fmt: skip
    return generator, discriminator, manifest.labels


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    channels = 1 if args.data == "fashion_mnist" or args.color == "gray" else 3
    if args.init:  # the published generator fixes the image shape
        spec = kerve_manifest.read_manifest(args.init).input
        channels, args.image_size = spec.channels, spec.height
    if args.data == "fashion_mnist":
        args.image_size = fashion_mnist.IMAGE_SIZE
    images, labels, data_classes = load_images(args.data, args.image_size, channels)
    generator, discriminator, class_names = load_networks(args, data_classes, channels)
    images, labels = restrict(images, labels, data_classes, class_names, args.classes)
    print(f"data {args.data}: {len(images)} images of {len(np.unique(labels))} classes")

    work_dir = Path(tempfile.mkdtemp(prefix="kerve-gan-"))
    gan = ConditionalGAN(
        generator, discriminator, args.latent_dim, args.smoothing, args.seed, args.class_weight
    )
    gan.compile(
        d_optimizer=keras.optimizers.Adam(args.learning_rate, beta_1=0.5),
        g_optimizer=keras.optimizers.Adam(args.learning_rate, beta_1=0.5),
    )
    watch = CollapseWatch(args.collapse_patience)
    grids = SampleGrids(generator, class_names, args.latent_dim, work_dir)
    grids.on_epoch_end(-1)  # epoch 0: the starting point (noise, or the --init generator)
    found = judge.find(args.judge, class_names)
    callbacks = [watch, grids, keras.callbacks.CSVLogger(work_dir / "history.csv")]
    if found is not None:
        judged = JudgedEpochs(found, class_names, args.latent_dim, args.epoch_judge_images)
        callbacks.insert(0, judged)
    result = gan.fit(
        make_dataset(images, labels, args.batch_size, args.seed),
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        callbacks=callbacks,
        verbose=args.verbose,
        shuffle=False,  # the dataset shuffles itself
    )
    history: dict[str, list[float]] = {}
    finetune.record(history, result)
    history.pop("d_fake_step", None)
    plots.learning_curves(history, work_dir / "learning_curves.png")

    generator.save(work_dir / "generator.keras")  # kept if the evaluation fails
    discriminator.save(work_dir / DISCRIMINATOR_FILE)
    quality = (
        {} if found is None else measure_quality(generator, found, class_names, channels, args)
    )
    elapsed = time.perf_counter() - started
    extra = {path.name: path for path in sorted(work_dir.glob("samples_epoch*.png"))}
    extra["samples.png"] = max(extra.values())
    extra |= {n: work_dir / n for n in (DISCRIMINATOR_FILE, "learning_curves.png", "history.csv")}
    manifest = make_manifest(args, channels, class_names, quality, history, watch, elapsed)
    path = export.publish(generator, manifest, args.out.parent, args.out.name, extra_files=extra)
    print_summary(path, quality, watch, elapsed)
    return path


def make_manifest(args, channels, class_names, quality, history, watch, elapsed):
    return kerve_manifest.GenerationManifest(
        input=kerve_manifest.InputSpec.scaled(
            args.image_size, args.image_size, channels, "symmetric"
        ),  # fmt: skip
        labels=list(class_names),
        generation=kerve_manifest.GenerationSpec(latent_dim=args.latent_dim),
        batching=kerve_manifest.BatchingSpec(max_batch_size=64, max_queue=1024),
        description=(
            "makes 28x28 Fashion-MNIST clothing items of a chosen class"
            if args.data == "fashion_mnist"
            else f"makes images of the classes of {args.data}"
        )
        + "; conditional DCGAN generator"
        + (f" (fine-tuned from {args.init})" if args.init else ""),
        metrics={**quality, "collapsed_at_step": watch.collapsed},
        provenance={
            "script": "training.gan",
            "dataset": args.data,
            "classes": args.classes or "all",
            "arch": args.arch,
            "width": args.width,
            "class_weight": args.class_weight,
            "epochs_run": len(history.get("d_loss", [])),
            "final": {name: round(values[-1], 4) for name, values in history.items()},
            "init": str(args.init) if args.init else None,
            "training_seconds": round(elapsed),
        },
    )


def print_summary(path: Path, quality: dict, watch: CollapseWatch, elapsed: float) -> None:
    print("\n" + "=" * 72)
    print(f"published      {path}")
    if quality:
        print(f"FID-F          {quality['fid_f']:.2f}  (real train vs test: "
              f"{quality['fid_f_real_floor']:.2f})")  # fmt: skip
        print(f"conditional    {quality['conditional_accuracy']:.1%} of "
              f"{quality['generated_images']} images classified as requested "
              f"(judge on real test images: {quality['judge_accuracy_on_real']:.1%})")  # fmt: skip
        per_class = quality["conditional_accuracy_per_class"]
        print("per class      " + json.dumps(per_class))
    if watch.collapsed:
        print(f"COLLAPSED      at step {watch.collapsed}: the run was stopped there")
    print(f"took           {elapsed / 60:.1f} min; sample grids per epoch beside the model")
    print("=" * 72)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion_mnist", help="fashion_mnist or a folder")
    parser.add_argument("--arch", choices=["dcgan"], default="dcgan")
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--width", type=int, default=32, help="filters of the first layer")
    parser.add_argument("--image-size", type=int, default=28, help="for a folder of images")
    parser.add_argument("--color", choices=["gray", "rgb"], default="rgb", help="for a folder")
    parser.add_argument("--classes", type=lambda text: text.split(","), help="train on these only")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, help="default: one pass over the data")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, help="default 2e-4, 5e-5 with --init")
    parser.add_argument("--smoothing", type=float, default=0.1, help="real target = 1 - this")
    parser.add_argument(
        "--class-weight", type=float, default=1.0, help="auxiliary classifier loss (0: off)"
    )
    parser.add_argument("--collapse-patience", type=int, default=200, help="steps")
    parser.add_argument("--eval-images", type=int, default=10_000)
    parser.add_argument("--epoch-judge-images", type=int, default=1000, help="judged per epoch")
    parser.add_argument("--judge", type=Path, help="classifier (default: fashion-classifier "
                        "beside --out)")  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache/kerve", help="judge statistics"
    )
    parser.add_argument("--init", type=Path, help="a published generator version to fine-tune")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--verbose", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("models/generator"))
    args = parser.parse_args(argv)
    if args.learning_rate is None:
        args.learning_rate = 5e-5 if args.init else 2e-4
    if args.judge is None:
        args.judge = args.out.parent / "fashion-classifier"
    return args


if __name__ == "__main__":
    main()
