"""tf.data input pipelines: resize, colour, scale, augment, batch and prefetch."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
CAPTION_BUCKETS = [8, 11, 14, 17, 20, 24]  # caption lengths (with the end token) per batch


def augmentation(seed: int = 1337) -> keras.Sequential:
    """Mild geometric augmentation, run in the input pipeline (never exported)."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
        ],
        name="augmentation",
    )


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    image_size: int,
    mean: list[float],
    std: list[float],
    batch_size: int = 64,
    training: bool = False,
    seed: int = 1337,
) -> tf.data.Dataset:
    """Batches of (scaled float32 [b, size, size, 3], label) from uint8 images.

    Grayscale images ([n, h, w] or [n, h, w, 1]) become RGB; the scaling is the
    manifest's, so training sees exactly what the service will send.
    """
    if images.ndim == 3:
        images = images[..., np.newaxis]
    mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)

    def prepare(image, label):
        image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size))
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        dataset = dataset.shuffle(
            min(len(images), 20_000), seed=seed, reshuffle_each_iteration=True
        )
    dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE).batch(batch_size)
    if training:
        augment = augmentation(seed)
        dataset = dataset.map(
            lambda x, y: (augment(x, training=True), y), num_parallel_calls=AUTOTUNE
        )
    dataset = dataset.map(lambda x, y: ((x - mean_t) / std_t, y), num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float] | None:
    """Inverse-frequency weights, or None when the classes are balanced within 10%."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if counts.min() > 0 and counts.max() / counts.min() < 1.1:
        return None
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return {index: float(weight) for index, weight in enumerate(weights)}


def make_segmentation_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    mean: list[float],
    std: list[float],
    batch_size: int = 32,
    training: bool = False,
    seed: int = 1337,
) -> tf.data.Dataset:
    """Batches of (scaled float32 [b, h, w, 3], class mask uint8 [b, h, w]).

    Training batches are shuffled and flipped left-right, image and mask together.
    """
    mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)

    def prepare(image, mask):
        return (tf.cast(image, tf.float32) - mean_t) / std_t, mask

    def flip(image, mask):
        flipped = tf.random.uniform(()) < 0.5
        return (
            tf.where(flipped, tf.reverse(image, axis=[1]), image),
            tf.where(flipped, tf.reverse(mask, axis=[1]), mask),
        )

    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    if training:
        tf.random.set_seed(seed)
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.map(flip, num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return dataset.prefetch(AUTOTUNE)


def make_caption_dataset(
    sources: np.ndarray,
    scene_index: np.ndarray,
    tokens: np.ndarray,
    targets: np.ndarray,
    batch_size: int = 64,
    training: bool = False,
    seed: int = 1337,
    scale: tuple[list[float], list[float]] | None = None,
) -> tf.data.Dataset:
    """Batches of ((float32 source per caption, input tokens [b, t]), target tokens [b, t]).

    ``sources`` holds one entry per scene (cached backbone features, or uint8
    images scaled by ``scale`` = (mean, std)); each caption gathers its scene's,
    so a scene's 3-5 captions share one copy. No flips: they would swap left and right.
    The last batch of each length bucket may be smaller than ``batch_size``.
    """
    table = tf.constant(sources)
    mean, std = scale or ([0.0], [1.0])
    mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)

    def gather(index, inputs, outputs):
        source = (tf.cast(tf.gather(table, index), tf.float32) - mean_t) / std_t
        return (source, inputs), outputs

    def cut(index, inputs, outputs):
        longest = tf.reduce_max(tf.math.count_nonzero(outputs, axis=1, dtype=tf.int32))
        return index, inputs[:, :longest], outputs[:, :longest]

    dataset = tf.data.Dataset.from_tensor_slices((scene_index, tokens, targets))
    if training:
        dataset = dataset.shuffle(len(tokens), seed=seed, reshuffle_each_iteration=True)
    # Captions of similar length share a batch, cut to its longest: a recurrent
    # step costs the same for padding as for words.
    dataset = dataset.bucket_by_sequence_length(
        lambda index, inputs, outputs: tf.math.count_nonzero(outputs, dtype=tf.int32),
        CAPTION_BUCKETS,
        [batch_size] * (len(CAPTION_BUCKETS) + 1),
    )
    dataset = dataset.map(cut, num_parallel_calls=AUTOTUNE).map(gather, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def make_denoising_dataset(
    patches: np.ndarray,
    sigma_range: tuple[float, float],
    batch_size: int,
    gray_fraction: float = 0.0,
    noise_map: bool = False,
    seed: int = 1337,
) -> tf.data.Dataset:
    """Endless batches of (noisy, clean) patches in [0, 1] from uint8 ``patches``.

    Each patch is flipped and rotated at random (the 8 symmetries of a square),
    and gets Gaussian noise of its own sigma, drawn uniformly from ``sigma_range``
    (pixel levels): one model learns every level (a blind denoiser). With
    ``gray_fraction``, that share of RGB patches turns gray with one noise plane in
    all three channels, which is what a gray upload looks like to an RGB model.
    With ``noise_map`` the input is (noisy, a sigma / 255 map), FFDNet-style.
    """
    low, high = (value / 255.0 for value in sigma_range)
    channels = patches.shape[-1]

    def corrupt(patch):
        clean = tf.image.rot90(
            tf.cast(patch, tf.float32) / 255.0, tf.random.uniform((), 0, 4, tf.int32)
        )
        clean = tf.image.random_flip_left_right(clean)
        noise = tf.random.normal(tf.shape(clean))
        if channels == 3 and gray_fraction > 0:
            gray = tf.random.uniform(()) < gray_fraction
            luma = tf.repeat(tf.image.rgb_to_grayscale(clean), 3, axis=-1)
            clean = tf.where(gray, luma, clean)
            noise = tf.where(gray, tf.repeat(noise[..., :1], 3, axis=-1), noise)
        sigma = tf.random.uniform((), low, high)
        noisy = clean + sigma * noise
        if noise_map:
            return (noisy, tf.fill(tf.concat([tf.shape(clean)[:2], [1]], 0), sigma)), clean
        return noisy, clean

    tf.random.set_seed(seed)
    dataset = tf.data.Dataset.from_tensor_slices(patches)
    dataset = dataset.shuffle(len(patches), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(corrupt, num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)
