"""Fine-tune a super-resolution model, or train a small one, on real photos, and publish it.

    python -m training.upscaler [--init models/upscaler/<version> | --init esrgan-slim-x4]
        [--scale 2] [--data DIR] [--epochs N] --out models/upscaler-tuned

Without ``--init`` a small network trains from scratch: residual blocks on the
low-resolution image, a sub-pixel output (a stride-``scale`` transposed convolution,
which is depth-to-space and a 1x1 convolution in one built-in layer) and a skip that
starts as bicubic interpolation, so it first learns what bicubic misses. ``--init``
fine-tunes a published version or one of the converted npm models
(training/pretrained_upscalers.py).

Pairs are made on the fly: random high-resolution crops, flipped and rotated,
shrunk by ``--scale`` with bicubic or area averaging (antialiased) and rounded to
8 bits, as an uploaded small photo would be. The photos are split by photo
(train/validation/test), so no test photo is ever cut into training crops: the
built-in real photos of training/data/photos.py by default, or the photos under
``--data DIR`` (any depth and format, or the user's own train/ val/ test/ folders;
training/data/photo_folder.py), split reproducibly by ``--seed``. The test photos
are then upscaled by the model, tiled exactly as the service tiles them, and by
bicubic and Lanczos interpolation, and PSNR/SSIM reported (training/evaluate.py),
with a side-by-side picture (low-res | bicubic | model | original) written next to
the model.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import kerve_manifest  # noqa: E402
from training import evaluate, export, finetune, plots  # noqa: E402
from training.data import photo_folder, photos  # noqa: E402

MAX_VAL_PATCHES = 256
EVAL_MAX_SIDE = 768  # test photos are cut to a centre crop of at most this side (high-res)
DEFAULT_TILE = 128  # low-resolution pixels per tile side
TILE_BATCH = 4  # tiles per model call when upscaling a whole photo
# Pillow's filters for the classical baselines, and to make low-resolution inputs.
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
# Layers that never look at a neighbouring pixel (the receptive field ignores them).
POINTWISE = (
    keras.layers.InputLayer, keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
    keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Concatenate,
    keras.layers.Rescaling, keras.layers.BatchNormalization, keras.layers.Dropout,
    keras.layers.Identity,
)  # fmt: skip
# Pixels of the input each output pixel of UpSampling2D reads, per side, by interpolation.
INTERPOLATION_REACH = {"nearest": 0, "bilinear": 1, "bicubic": 2, "lanczos3": 3, "lanczos5": 5}


# -- data --------------------------------------------------------------------------------
def load_photos(data: Path | None, seed: int, min_side: int, max_side: int | None):
    """{split: {name: RGB uint8}}: the built-in photos, or the user's photo folder split by
    photo (training/data/photo_folder.py: any depth and format, or train/ val/ test/)."""
    if data is None:
        chosen = {split: photos.load(split) for split in photos.SPLITS}
    else:
        folder = photo_folder.load(data, min_side=min_side, seed=seed, max_side=max_side)
        print(f"photos under {data}: {folder.how}")
        chosen = {split: folder.load(split) for split in photo_folder.SPLITS}
    return {
        split: {name: photos.as_rgb(photo) for name, photo in chosen[split].items()}
        for split in chosen
    }


def shrink(image: np.ndarray, scale: int, method: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """(low-res, high-res): the image cut to a multiple of ``scale``, and it shrunk by
    ``scale`` with Pillow's antialiased ``method`` (bicubic: MATLAB imresize's kernel)."""
    height, width = (side - side % scale for side in image.shape[:2])
    high = image[:height, :width]
    low = Image.fromarray(high).resize((width // scale, height // scale), RESAMPLE[method])
    return np.asarray(low), high


def make_dataset(
    pool: np.ndarray, scale: int, batch_size: int, mean: float, std: float, seed: int
) -> tf.data.Dataset:
    """Endless (low-res, high-res) batches in the model's scaling from uint8 high-res crops:
    each crop flipped and rotated at random, and shrunk by bicubic or area averaging."""
    size = pool.shape[1] // scale

    def pair(patch):
        high = tf.image.rot90(tf.cast(patch, tf.float32), tf.random.uniform((), 0, 4, tf.int32))
        high = tf.image.random_flip_left_right(high)
        bicubic = tf.image.resize(high, (size, size), "bicubic", antialias=True)
        area = tf.image.resize(high, (size, size), "area")
        low = tf.where(tf.random.uniform(()) < 0.5, bicubic, area)
        low = tf.clip_by_value(tf.round(low), 0.0, 255.0)  # 8 bits, as an upload
        return (low - mean) / std, (high - mean) / std

    tf.random.set_seed(seed)
    dataset = tf.data.Dataset.from_tensor_slices(pool)
    dataset = dataset.shuffle(len(pool), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(pair, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def validation_pairs(val: dict[str, np.ndarray], patch: int, scale: int, seed: int):
    """Fixed (low-res, high-res) uint8 patch pairs of the validation photos (bicubic)."""
    pool = photos.patch_pool(val, patch, patch)
    if len(pool) > MAX_VAL_PATCHES:
        pool = pool[np.random.default_rng(seed).choice(len(pool), MAX_VAL_PATCHES, replace=False)]
    if not len(pool):
        raise ValueError(f"the validation photos are smaller than --patch-size {patch}")
    low = np.stack([shrink(high, scale)[0] for high in pool])
    return low, pool


# -- model -------------------------------------------------------------------------------
def build_model(scale: int, width: int, blocks: int) -> keras.Model:
    """A small residual network in [0, 1] units that adds detail to a bicubic upscale."""
    low = keras.Input((None, None, 3), name="low_res")
    x = head = keras.layers.Conv2D(width, 3, padding="same", name="head")(low)
    for index in range(1, blocks + 1):
        y = keras.layers.Conv2D(
            width, 3, padding="same", activation="relu", name=f"block{index}_conv1"
        )(x)
        y = keras.layers.Conv2D(width, 3, padding="same", name=f"block{index}_conv2")(y)
        x = keras.layers.Add(name=f"block{index}_add")([x, y])
    x = keras.layers.Conv2D(width, 3, padding="same", name="body_out")(x)
    x = keras.layers.Add(name="global_skip")([x, head])
    # Each high-res pixel of a scale x scale block is its own linear map of the features;
    # zero at first, so that training starts from plain bicubic.
    detail = keras.layers.Conv2DTranspose(
        3, scale, strides=scale, kernel_initializer="zeros", name="subpixel"
    )(x)
    # The skip starts as bicubic interpolation and trains with the rest. (UpSampling2D's
    # bicubic mode cannot take images of unknown size in a TensorFlow graph.)
    interpolation = keras.layers.Conv2DTranspose(
        3, 4 * scale, strides=scale, padding="same", use_bias=False, name="interpolation"
    )
    base = interpolation(low)
    interpolation.set_weights([bicubic_kernel(scale)])
    high = keras.layers.Add(name="high_res")([base, detail])
    return keras.Model(low, high, name=f"upscaler_x{scale}")


def bicubic_kernel(scale: int, a: float = -0.5) -> np.ndarray:
    """The (4 scale, 4 scale, 3, 3) transposed-convolution kernel (stride ``scale``, "same"
    padding) that is bicubic upsampling (Keys' cubic, half-pixel centres, as
    tf.image.resize and Pillow) of each channel, away from the borders."""
    size = 4 * scale
    before = (size - scale) // 2  # the padding TensorFlow puts before, for "same"
    x = np.abs((np.arange(size) - before + 0.5) / scale - 0.5)  # LR distance of each tap
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    taps = np.where(x <= 1, near, np.where(x < 2, far, 0.0))
    kernel = np.zeros((size, size, 3, 3), np.float32)
    for channel in range(3):
        kernel[:, :, channel, channel] = np.outer(taps, taps)
    return kernel


def receptive_field(model: keras.Model) -> tuple[float, int]:
    """(radius, scale): how many input pixels on each side reach an output pixel, at most,
    and output pixels per input pixel. Walks the layer graph; the radius is what a tile's
    margin needs for tiles to stitch into exactly the whole-image result."""
    from training import tfjs_layers

    reach: dict[str, tuple[float, int]] = {}
    config = model.get_config()
    previous: list[str] = []
    for layer_config in config["layers"]:
        name = layer_config.get("name") or layer_config["config"]["name"]
        layer = model.get_layer(name)
        # A Sequential's config has no graph: each layer reads the one before.
        inbound = (
            _inbound_layers(layer_config["inbound_nodes"])
            if "inbound_nodes" in layer_config
            else previous
        )
        previous = [layer.name]
        radius = max((reach[source][0] for source in inbound), default=0.0)
        factors = {reach[source][1] for source in inbound} or {1}
        if len(factors) > 1:
            raise ValueError(f"layer {layer.name!r} joins tensors of different resolutions")
        (factor,) = factors
        if isinstance(layer, keras.layers.Conv2DTranspose):
            # An output pixel reads ceil(k / s) input pixels per axis: none beside its own
            # when the kernel is no larger than the stride (a sub-pixel layer).
            strides = _pair(layer.strides)
            spread = max(
                math.ceil(k / s) - 1 for k, s in zip(layer.kernel_size, strides, strict=True)
            )
            radius += spread / factor
            factor *= _square(strides, layer.name)
        elif isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
            if _pair(layer.strides) != (1, 1):
                raise ValueError(f"layer {layer.name!r} downsamples; not an upscaling network")
            dilation = _pair(layer.dilation_rate)
            radius += (
                max((k - 1) / 2 * d for k, d in zip(layer.kernel_size, dilation, strict=True))
                / factor
            )
        elif isinstance(layer, keras.layers.UpSampling2D):
            radius += INTERPOLATION_REACH[layer.interpolation] / factor
            factor *= _square(layer.size, layer.name)
        elif isinstance(layer, tfjs_layers.PixelShuffle):
            factor *= layer.scale
        elif not isinstance(layer, POINTWISE + (tfjs_layers.MultiplyBeta,)):
            raise ValueError(
                f"cannot bound the receptive field of a {type(layer).__name__} "
                f"({layer.name!r}); give the margin by hand"
            )
        reach[layer.name] = (radius, factor)
    ends = _inbound_layers(config["output_layers"]) if "output_layers" in config else previous
    outputs = [reach[name] for name in ends]
    return max(r for r, _ in outputs), outputs[0][1]


def _inbound_layers(structure) -> list[str]:
    """Names of the layers a config's inbound nodes (or output list) refer to."""
    names: list[str] = []
    if isinstance(structure, dict):
        history = structure.get("config", {}).get("keras_history")
        if structure.get("class_name") == "__keras_tensor__" and history:
            return [history[0]]
        for value in structure.values():
            names += _inbound_layers(value)
    elif isinstance(structure, list | tuple):
        if len(structure) == 3 and isinstance(structure[0], str) and isinstance(structure[1], int):
            return [structure[0]]  # [layer, node, tensor]
        for value in structure:
            names += _inbound_layers(value)
    return names


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _square(size, name: str) -> int:
    rows, cols = _pair(size)
    if rows != cols:
        raise ValueError(f"layer {name!r} scales rows and columns differently ({rows}x{cols})")
    return rows


# -- upscaling a photo -------------------------------------------------------------------
class Scaling:
    """A model's pixel scaling, as its manifest's input spec: model value = (pixel - mean) / std."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = float(mean), float(std)

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        return ((pixels.astype(np.float32) - self.mean) / self.std).astype(np.float32)

    def to_pixels(self, values: np.ndarray) -> np.ndarray:
        """uint8 pixels, rounded and clipped as the service writes them."""
        return np.clip(np.rint(values * self.std + self.mean), 0, 255).astype(np.uint8)


def upscale(
    model: keras.Model, image: np.ndarray, scale: int, scaling: Scaling, tile: int, margin: int
) -> np.ndarray:
    """The model's upscale of an RGB uint8 image, cut into overlapping tiles as the
    service cuts them (service/tiling.py: tile steps of ``tile - 2 * margin``, the image
    mirrored outside its edges, each tile's centre kept); float, in model units."""
    height, width = image.shape[:2]
    centre = tile - 2 * margin
    rows, cols = -(-height // centre), -(-width // centre)
    row_index = _mirror(np.arange(-margin, rows * centre + margin), height)
    col_index = _mirror(np.arange(-margin, cols * centre + margin), width)
    padded = scaling.to_model(image[np.ix_(row_index, col_index)])
    tiles = np.stack(
        [
            padded[r * centre : r * centre + tile, c * centre : c * centre + tile]
            for r in range(rows)
            for c in range(cols)
        ]
    )
    outputs = []
    for start in range(0, len(tiles), TILE_BATCH):
        batch = tiles[start : start + TILE_BATCH]
        filler = np.zeros((TILE_BATCH - len(batch), *batch.shape[1:]), np.float32)
        result = np.asarray(model.predict_on_batch(np.concatenate([batch, filler])))
        keep = slice(margin * scale, (tile - margin) * scale)  # the centre, in output pixels
        outputs.append(result[: len(batch), keep, keep])
    centres = np.concatenate(outputs)
    side = centre * scale
    mosaic = centres.reshape(rows, cols, side, side, -1).transpose(0, 2, 1, 3, 4)
    return mosaic.reshape(rows * side, cols * side, -1)[: height * scale, : width * scale]


def upscale_whole(
    model: keras.Model, image: np.ndarray, scale: int, scaling: Scaling, pad: int
) -> np.ndarray:
    """The model run once on the whole image mirrored by ``pad`` pixels, cropped back:
    what tiles with margins of ``pad`` must reproduce (float, model units)."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    output = np.asarray(model.predict_on_batch(scaling.to_model(padded)[np.newaxis]))[0]
    return output[pad * scale : (pad + height) * scale, pad * scale : (pad + width) * scale]


def _mirror(indices: np.ndarray, size: int) -> np.ndarray:
    """np.pad's "symmetric" indices, as service/tiling.py mirrors."""
    indices = np.mod(indices, 2 * size)
    return np.where(indices >= size, 2 * size - 1 - indices, indices)


def tiling_check(
    model, image: np.ndarray, scale: int, scaling: Scaling, tile: int, margins: list[int]
) -> dict[int, float]:
    """Largest difference (pixel levels, before rounding) between the tiled and the
    whole-image upscale of ``image`` (cut to a crop that needs 3x3 tiles), per margin:
    0 up to float error once the margin covers the receptive field."""
    side = 2 * (tile - 2 * max(margins)) + 11
    image = image[:side, :side]
    differences = {}
    for margin in margins:
        whole = upscale_whole(model, image, scale, scaling, margin)
        tiled = upscale(model, image, scale, scaling, tile, margin)
        differences[margin] = round(float(np.abs(tiled - whole).max() * scaling.std), 4)
    return differences


# -- evaluation --------------------------------------------------------------------------
def eval_crop(image: np.ndarray) -> np.ndarray:
    """A centre crop of at most EVAL_MAX_SIDE per side (bounds evaluation time)."""
    height, width = image.shape[:2]
    top, left = max(0, (height - EVAL_MAX_SIDE) // 2), max(0, (width - EVAL_MAX_SIDE) // 2)
    return image[top : top + EVAL_MAX_SIDE, left : left + EVAL_MAX_SIDE]


def compare_methods(
    models: dict[str, keras.Model],
    test: dict[str, np.ndarray],
    scale: int,
    scaling: Scaling,
    tile: int,
    margin: int,
) -> tuple[dict, dict]:
    """PSNR/SSIM of each model and of bicubic and Lanczos upscaling, mean over the test
    photos (each shrunk by ``scale`` with bicubic, then upscaled back), per photo too;
    seconds per output megapixel of each model; and the first photo's outputs, for the
    picture."""
    rows: dict[str, dict[str, list]] = {}
    timing: dict[str, float] = {}
    samples: dict[str, np.ndarray] = {}
    megapixels = 0.0
    for index, (name, photo) in enumerate(test.items()):
        low, high = shrink(eval_crop(photo), scale)
        outputs = {
            method: np.asarray(Image.fromarray(low).resize(high.shape[1::-1], resample))
            for method, resample in RESAMPLE.items()
        }
        for label, model in models.items():
            started = time.perf_counter()
            outputs[label] = scaling.to_pixels(upscale(model, low, scale, scaling, tile, margin))
            timing[label] = timing.get(label, 0.0) + time.perf_counter() - started
        megapixels += high.shape[0] * high.shape[1] / 1e6
        for method, output in outputs.items():
            quality = evaluate.image_quality(high / 255.0, output / 255.0)
            row = rows.setdefault(method, {"psnr": [], "ssim": [], "per_photo": []})
            row["psnr"].append(quality["psnr"])
            row["ssim"].append(quality["ssim"])
            row["per_photo"].append({"photo": name, **{k: round(v, 4) for k, v in quality.items()}})
        if index == 0:
            samples = {"low-res": low, **outputs, "original": high}
    table = {
        method: {
            "psnr": round(float(np.mean(row["psnr"])), 3),
            "ssim": round(float(np.mean(row["ssim"])), 4),
            "per_photo": row["per_photo"],
        }
        for method, row in rows.items()
    }
    per_megapixel = {label: round(seconds / megapixels, 3) for label, seconds in timing.items()}
    return {"psnr_ssim": table, "seconds_per_megapixel": per_megapixel}, samples


def side_by_side(samples: dict[str, np.ndarray], path: Path, crop: int = 160) -> None:
    """The same crop of low-res (pixels enlarged) | bicubic | each model | original,
    each titled with its PSNR against the original."""
    import matplotlib.pyplot as plt  # training.plots has chosen the Agg backend (files only)

    original = samples["original"]
    scale = original.shape[0] // samples["low-res"].shape[0]
    crop = min(crop, *original.shape[:2]) // scale * scale
    top = (original.shape[0] - crop) // 3 // scale * scale
    left = (original.shape[1] - crop) // 2 // scale * scale
    shown = {"low-res": samples["low-res"].repeat(scale, 0).repeat(scale, 1)}
    shown.update({k: v for k, v in samples.items() if k not in ("low-res", "lanczos")})
    figure, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6), squeeze=False)
    for axis, (label, image) in zip(axes[0], shown.items(), strict=True):
        window = image[top : top + crop, left : left + crop]
        title = f"{label} (x{scale})" if label == "low-res" else label
        if label not in ("low-res", "original"):
            error = np.mean((image / 255.0 - original / 255.0) ** 2)
            title += f"\n{-10 * np.log10(max(error, 1e-10)):.2f} dB"
        axis.imshow(window, interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def bicubic_psnr(low: np.ndarray, high: np.ndarray) -> float:
    """Mean PSNR (dB) of Pillow's bicubic upscale of each low-res patch."""
    size = high.shape[2:0:-1]
    values = [
        evaluate.image_quality(
            h / 255.0, np.asarray(Image.fromarray(x).resize(size, RESAMPLE["bicubic"])) / 255.0
        )["psnr"]
        for x, h in zip(low, high, strict=True)
    ]
    return float(np.mean(values))


class ValidationPsnr(keras.callbacks.Callback):
    """``val_psnr``: mean PSNR (dB) of the validation pairs, outputs rounded to 8 bits."""

    def __init__(self, low: np.ndarray, high: np.ndarray, scaling: Scaling, batch_size: int):
        super().__init__()
        self.low, self.high = scaling.to_model(low), high.astype(np.float32)
        self.scaling, self.batch_size = scaling, batch_size

    def on_epoch_end(self, epoch, logs=None):
        outputs = self.model.predict(self.low, batch_size=self.batch_size, verbose=0)
        error = (self.scaling.to_pixels(outputs).astype(np.float32) - self.high) / 255.0
        mse = np.maximum(np.mean(error**2, axis=(1, 2, 3)), 1e-10)
        if logs is not None:
            logs["val_psnr"] = float(np.mean(-10 * np.log10(mse)))


# -- main --------------------------------------------------------------------------------
def load_init(init: str) -> tuple[keras.Model, int, Scaling, int, dict]:
    """(model, scale, scaling, tile side, source) of a published version or a converted
    npm model."""
    path = Path(init)
    if path.exists():
        folder = path if path.is_dir() else path.parent
        file = path / kerve_manifest.MODEL_FILE if path.is_dir() else path
        model = keras.saving.load_model(file, compile=False, safe_mode=True)
        manifest = kerve_manifest.read_manifest(folder)
        if not isinstance(manifest, kerve_manifest.UpscalingManifest):
            raise ValueError(f"{folder} holds a {manifest.task} model, not an upscaler")
        spec = manifest.input
        scaling = Scaling(spec.mean[0], spec.std[0])
        tile = spec.height
        return model, manifest.upscaling.scale, scaling, tile, {"init": str(path)}
    from training import pretrained_upscalers

    if init not in pretrained_upscalers.MODELS:
        raise ValueError(
            f"--init {init!r} is neither a path nor one of {sorted(pretrained_upscalers.MODELS)}"
        )
    model, pretrained = pretrained_upscalers.convert(init)
    mean, std = kerve_manifest.PIXEL_SCALINGS[pretrained.scaling]
    source = {"init": init, **pretrained.provenance()}
    return model, pretrained.scale, Scaling(mean, std), pretrained.tile, source


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    if args.init:
        model, scale, scaling, tile, source = load_init(args.init)
        args.tile_size = args.tile_size or tile
        if args.scale and args.scale != scale:
            raise ValueError(f"--init upscales x{scale}, not --scale {args.scale}")
        print(f"fine-tuning {args.init} (x{scale}, {model.count_params():,} weights)")
    else:
        scale, scaling = args.scale or 2, Scaling(*kerve_manifest.PIXEL_SCALINGS["unit"])
        model = build_model(scale, args.channels, args.blocks)
        source = {"init": None, "channels": args.channels, "blocks": args.blocks}
        print(f"from scratch: x{scale}, {args.blocks} blocks of {args.channels}, "
              f"{model.count_params():,} weights")  # fmt: skip
    args.tile_size = args.tile_size or DEFAULT_TILE
    radius, model_scale = receptive_field(model)
    if model_scale != scale:
        raise ValueError(f"the network upscales x{model_scale}, its manifest says x{scale}")
    margin = args.margin if args.margin is not None else math.ceil(radius)
    if 2 * margin >= args.tile_size:
        raise ValueError(
            f"--tile-size {args.tile_size} leaves no centre inside margins of {margin}"
        )
    if args.patch_size % scale:
        raise ValueError(f"--patch-size must be a multiple of the scale ({scale})")
    split = load_photos(args.data, args.seed, args.patch_size, args.max_side or None)
    pool = photos.patch_pool(split["train"], args.patch_size, args.patch_size // 2)
    if not len(pool):
        raise ValueError(f"the training photos are smaller than --patch-size {args.patch_size}")
    val_low, val_high = validation_pairs(split["val"], args.patch_size, scale, args.seed)
    counts = {part: len(split[part]) for part in split}
    print(
        f"photos: train {counts['train']} ({len(pool)} crops of {args.patch_size} px), "
        f"validation {counts['val']} ({len(val_low)} pairs), test {counts['test']}"
    )
    print(f"validation: bicubic {bicubic_psnr(val_low, val_high):.2f} dB (the bar to beat)")
    test = split["test"]
    baseline = {}
    if args.init:  # the starting point, on the same test photos
        baseline, _ = compare_methods({"init": model}, test, scale, scaling, args.tile_size, margin)
    work_dir = Path(tempfile.mkdtemp(prefix="kerve-upscaler-"))
    schedule = keras.optimizers.schedules.CosineDecay(
        args.learning_rate, args.epochs * args.steps_per_epoch, alpha=0.05
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mae")
    result = model.fit(
        make_dataset(pool, scale, args.batch_size, scaling.mean, scaling.std, args.seed),
        steps_per_epoch=args.steps_per_epoch,
        epochs=args.epochs,
        validation_data=(scaling.to_model(val_low), scaling.to_model(val_high)),
        validation_batch_size=args.batch_size,
        callbacks=[
            ValidationPsnr(val_low, val_high, scaling, args.batch_size),
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=args.patience, restore_best_weights=True
            ),
            keras.callbacks.CSVLogger(work_dir / "history.csv"),
        ],
        verbose=args.verbose,
    )
    history: dict[str, list[float]] = {}
    finetune.record(history, result)
    report, samples = compare_methods(
        {"model": model}, test, scale, scaling, args.tile_size, margin
    )
    if baseline:
        report["psnr_ssim"]["init"] = baseline["psnr_ssim"]["init"]
        report["seconds_per_megapixel"]["init"] = baseline["seconds_per_megapixel"]["init"]
    report["tiling"] = {
        "margin": margin,
        "receptive_radius": round(radius, 3),
        "max_abs_difference_levels": tiling_check(
            model, next(iter(test.values())), scale, scaling, args.tile_size, [margin]
        )[margin],
    }
    plots.learning_curves(history, work_dir / "learning_curves.png")
    side_by_side(samples, work_dir / "test_samples.png")
    elapsed = time.perf_counter() - started
    manifest = make_manifest(args, scale, scaling, margin, report, history, source, split, elapsed)
    path = export.publish(
        model,
        manifest,
        args.out.parent,
        args.out.name,
        extra_files={
            n: work_dir / n for n in ("learning_curves.png", "test_samples.png", "history.csv")
        },
    )
    print_summary(path, report, elapsed)
    return path


def make_manifest(args, scale, scaling, margin, report, history, source, split, elapsed):
    table = report["psnr_ssim"]
    gain = table["model"]["psnr"] - table["bicubic"]["psnr"]
    return kerve_manifest.UpscalingManifest(
        input=kerve_manifest.InputSpec(
            height=args.tile_size, width=args.tile_size, mean=[scaling.mean], std=[scaling.std]
        ),
        upscaling=kerve_manifest.UpscalingSpec(scale=scale, margin=margin),
        batching=kerve_manifest.BatchingSpec(max_batch_size=4, max_queue=1024, timeout_ms=60_000),
        default_for_task=args.default,
        description=(
            f"x{scale} super-resolution, "
            + (f"{args.init} fine-tuned" if args.init else "a small residual network trained")
            + f" on real photos; {gain:+.2f} dB over bicubic on the held-out photos"
        ),
        metrics={
            "test_psnr": table["model"]["psnr"],
            "test_ssim": table["model"]["ssim"],
            "test_psnr_bicubic": table["bicubic"]["psnr"],
            "test_photos": list(split["test"]),
            "evaluation": f"each test photo (centre crop <= {EVAL_MAX_SIDE} px) shrunk x{scale} "
            "with bicubic, upscaled back, compared in RGB",
            **report,
        },
        provenance={
            "script": "training.upscaler",
            "dataset": str(args.data) if args.data else "training/data/photos.py (real photos)",
            "train_photos": list(split["train"]),
            "val_photos": list(split["val"]),
            **source,
            **finetune.patch_training_provenance(args, history, elapsed),
        },
    )


def print_summary(path: Path, report: dict, elapsed: float) -> None:
    print("\n" + "=" * 78)
    print(f"model      {path}")
    print(f"{'':12}{'PSNR dB':>10}{'SSIM':>8}{'s/MP':>9}")
    for method, row in report["psnr_ssim"].items():
        per_mp = report["seconds_per_megapixel"].get(method)
        print(f"{method:12}{row['psnr']:10.2f}{row['ssim']:8.4f}"
              + (f"{per_mp:9.3f}" if per_mp is not None else ""))  # fmt: skip
    tiling = report["tiling"]
    print(
        f"tiles      margin {tiling['margin']} px (receptive radius {tiling['receptive_radius']}): "
        f"tiled and whole differ by {tiling['max_abs_difference_levels']} levels at most"
    )
    print(f"took       {elapsed / 60:.1f} min; curves and samples beside the model")
    print("=" * 78)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--init", help="a published version (folder or .keras) or a converted npm model's name"
    )
    parser.add_argument("--scale", type=int, choices=range(2, 9), help="from scratch (default 2)")
    parser.add_argument("--data", type=Path, help="a folder of photos (default: built-in photos)")
    parser.add_argument(
        "--max-side",
        type=int,
        default=1024,
        help="--data photos longer than this are shrunk to it (Lanczos: clean targets); 0 keeps",
    )
    parser.add_argument("--channels", type=int, default=32, help="from scratch: feature width")
    parser.add_argument("--blocks", type=int, default=4, help="from scratch: residual blocks")
    parser.add_argument("--patch-size", type=int, default=96, help="high-res crop side")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--learning-rate", type=float, help="Adam's peak rate (default: 1e-3, 1e-4 with --init)"
    )
    parser.add_argument("--patience", type=int, default=4, help="early-stopping patience")
    parser.add_argument(
        "--tile-size", type=int, help="low-res tile side (default: the --init model's, or 128)"
    )
    parser.add_argument(
        "--margin", type=int, help="context pixels per tile side (default: the receptive radius)"
    )
    parser.add_argument("--default", action="store_true", help="answer the plain /v1/upscale route")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--verbose", type=int, default=2, help="Keras progress: 0, 1 or 2")
    parser.add_argument("--out", type=Path, default=Path("models/upscaler-tuned"))
    args = parser.parse_args(argv)
    args.learning_rate = args.learning_rate or (1e-4 if args.init else 1e-3)
    return args


if __name__ == "__main__":
    main()
