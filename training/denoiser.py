"""Train a residual denoiser (DnCNN or U-Net) on patches of real photos, and publish it.

    python -m training.denoiser --arch dncnn|unet --depth N --channels N --sigma 0-50 \\
        --epochs N --out models/denoiser [--init models/denoiser/<version> | dncnn17-N]
        [--data DIR [--split 0.8,0.1,0.1] [--max-side 1024]]

Both networks are fully convolutional and predict the noise, which is subtracted
from their input (residual learning, Zhang et al. 2017): DnCNN is a plain stack of
``--depth`` 3x3 convolutions with BatchNorm; the U-Net halves the resolution
``--depth`` times, which buys a wide receptive field for little compute on a CPU.
Training is blind: every patch gets its own noise level drawn from ``--sigma``,
and a fifth of the RGB patches are gray with one noise plane, so one RGB model
serves gray uploads too. ``--noise-map`` trains a non-blind model that also takes
a sigma map (FFDNet); ``--init`` fine-tunes a published version (e.g. on a new
noise range). ``--init dncnn17-N`` (6 or 17 layers; L, M, H or N) starts from scico's
pretrained greyscale DnCNN (training/dncnn.py): widened to colour and fine-tuned with
its BatchNorm frozen, or, with ``--color gray --epochs 0``, published as it is.

Photos: the built-in ones (training/data/photos.py), or the user's folder ``--data DIR``
(any depth, any size and format, gray or colour; training/data/photo_folder.py),
checked before training and split by photo. The held-out photos are then denoised at
sigma 15, 25 and 50 by the model and by the classical methods of
training/classical_denoisers.py, and PSNR, SSIM and time per megapixel reported; a
one-channel model is measured on their gray (luma) versions.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kerve_manifest  # noqa: E402
from training import (  # noqa: E402
    classical_denoisers,
    dncnn,
    evaluate,
    export,
    finetune,
    pipeline,
    plots,
)
from training.data import photo_folder, photos  # noqa: E402

DEFAULT_DEPTH = {"dncnn": 17, "unet": 3}
GRAY_FRACTION = 0.2
EVAL_SIGMAS = (15, 25, 50)
MIN_PATCH_STD = 2.0  # pixel levels: flat patches (black sky, retina borders) teach nothing
VAL_SIGMA_SEED = 7
DEFAULT_SIGMA = (0.0, 50.0)


# -- data ------------------------------------------------------------------------------
def photo_source(args: argparse.Namespace):
    """What ``load(split)`` and ``names(split)`` read: the built-in photos, or the
    user's folder, decoded and checked (training/data/photo_folder.py)."""
    if args.data is None:
        return photos
    folder = photo_folder.load(
        args.data, args.patch_size, args.split, args.seed, args.max_side or None
    )
    counts = ", ".join(f"{split} {len(folder.names(split))}" for split in photo_folder.SPLITS)
    print(f"photos in {args.data}: {counts} ({folder.how})")
    return folder


def make_patches(args: argparse.Namespace, channels: int, source) -> tuple[np.ndarray, tuple]:
    """Training patches (uint8), and validation (inputs, clean) with fixed noise."""
    pool = photos.patch_pool(source.load("train"), args.patch_size, args.patch_size // 2, channels)
    pool = pool[pool.reshape(len(pool), -1).std(axis=1) >= MIN_PATCH_STD]
    val = photos.patch_pool(source.load("val"), args.patch_size, args.patch_size, channels)
    rng = np.random.default_rng(VAL_SIGMA_SEED)
    clean = val.astype(np.float32) / 255.0
    sigmas = rng.uniform(*args.sigma, size=len(val)).astype(np.float32) / 255.0
    noisy = clean + sigmas[:, None, None, None] * rng.standard_normal(clean.shape, np.float32)
    inputs = (noisy, noise_maps(noisy, sigmas)) if args.noise_map else noisy
    return pool, (inputs, clean)


def noise_maps(images: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """One (h, w, 1) map per image holding its sigma (in [0, 1] units)."""
    return np.broadcast_to(sigmas[:, None, None, None], (*images.shape[:3], 1)).copy()


def add_noise(clean: np.ndarray, sigma: float, seed: list[int]) -> np.ndarray:
    """``clean`` (in [0, 1]) plus Gaussian noise of ``sigma`` pixel levels; the same
    seed gives the same noise. Not clipped: the standard AWGN benchmark protocol."""
    rng = np.random.default_rng(seed)
    return clean + (sigma / 255.0) * rng.standard_normal(clean.shape)


# -- model -----------------------------------------------------------------------------
def build_model(arch: str, depth: int, width: int, channels: int, noise_map: bool) -> keras.Model:
    image = keras.Input((None, None, channels), name="image")
    inputs = [image]
    x = image
    if noise_map:
        inputs.append(keras.Input((None, None, 1), name="noise_map"))
        x = keras.layers.Concatenate(name="with_noise_map")(inputs)
    x = (dncnn_body if arch == "dncnn" else unet_body)(x, depth, width)
    noise = keras.layers.Conv2D(channels, 3, padding="same", name="noise")(x)
    denoised = keras.layers.Subtract(name="denoised")([image, noise])
    return keras.Model(inputs if noise_map else image, denoised, name=f"{arch}_denoiser")


def dncnn_body(x, depth: int, width: int):
    """Conv+ReLU, then depth-2 Conv+BN+ReLU (the last 3x3 conv is the caller's)."""
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv_1")(x)
    for index in range(2, depth):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv_{index}")(x)
        x = keras.layers.BatchNormalization(name=f"conv_{index}_bn")(x)
        x = keras.layers.ReLU(name=f"conv_{index}_relu")(x)
    return x


def unet_body(x, levels: int, width: int):
    """Two 3x3 convs per level, strided-conv down, transposed-conv up, additive skips."""
    skips = []
    for level in range(levels):
        x = conv_pair(x, width * 2**level, f"down_{level}")
        skips.append(x)
        x = keras.layers.Conv2D(width * 2 ** (level + 1), 2, strides=2, name=f"downsample_{level}")(
            x
        )
    x = conv_pair(x, width * 2**levels, "bottom")
    for level in reversed(range(levels)):
        x = keras.layers.Conv2DTranspose(width * 2**level, 2, strides=2, name=f"upsample_{level}")(
            x
        )
        x = keras.layers.Add(name=f"skip_{level}")([x, skips[level]])
        x = conv_pair(x, width * 2**level, f"up_{level}")
    return x


def conv_pair(x, filters: int, name: str):
    for index in (1, 2):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"{name}_conv{index}"
        )(x)
    return x


def psnr(clean, denoised):
    """Mean PSNR (dB) of a batch, images in [0, 1]."""
    mse = keras.ops.mean(keras.ops.square(clean - denoised), axis=(1, 2, 3))
    return keras.ops.mean(-10.0 * keras.ops.log(keras.ops.maximum(mse, 1e-10)) / np.log(10.0))


# -- evaluation --------------------------------------------------------------------------
def size_multiple(model: keras.Model) -> int:
    """Image sides the model takes must be multiples of this (2**levels for a U-Net)."""
    downsamplings = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and tuple(layer.strides) != (1, 1)
    ]
    return 2 ** len(downsamplings)


def denoise(model: keras.Model, noisy: np.ndarray, sigma: float, margin: int = 0) -> np.ndarray:
    """Run the model on one whole photo ((h, w) or (h, w, 3), in [0, 1]); gray photos
    go through an RGB model as three equal channels, as the service sends them. The
    photo is mirrored ``margin`` pixels out on every side, as the service's tiles are
    (a network then never sees its own zero padding at the photo's edge)."""
    channels = model.inputs[0].shape[-1]
    image = noisy if noisy.ndim == 3 else noisy[..., np.newaxis]
    if channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    height, width = image.shape[:2]
    multiple = size_multiple(model)
    bottom, right = (
        margin + -(height + 2 * margin) % multiple,
        margin + -(width + 2 * margin) % multiple,
    )
    padding = ((margin, bottom), (margin, right), (0, 0))
    batch = np.pad(image, padding, mode="symmetric")[np.newaxis].astype(np.float32)
    inputs = (
        [batch, noise_maps(batch, np.float32([sigma / 255.0]))] if len(model.inputs) > 1 else batch
    )
    output = np.asarray(model.predict_on_batch(inputs))[0, margin : margin + height]
    output = output[:, margin : margin + width]
    if noisy.ndim == 2:
        return output.mean(axis=-1)
    return output


def evaluation_photos(source, split: str, channels: int) -> dict[str, np.ndarray]:
    """A split's photos in [0, 1]; their gray (luma) versions for a one-channel model."""
    loaded = source.load(split).items()
    return {
        name: (photos.as_gray(photo) if channels == 1 else photo) / 255.0 for name, photo in loaded
    }


def photo_key(name: str, photo: np.ndarray) -> str:
    """A photo's name and a digest of its pixels, for the baseline cache: the same name in
    another folder, or a photo's gray version, is another photo."""
    return f"{name}@{hashlib.sha256(np.ascontiguousarray(photo).tobytes()).hexdigest()[:12]}"


def compare_methods(model: keras.Model, args: argparse.Namespace, source) -> tuple[dict, dict]:
    """PSNR/SSIM per sigma and method, means over the test photos; seconds per
    megapixel per method; and every method's output for the first test photo at
    sigma 25, for the figure. The classical methods are tuned on the first validation
    photo."""
    cache = classical_denoisers.BaselineCache(args.baseline_cache)
    channels = model.inputs[0].shape[-1]
    test = evaluation_photos(source, "test", channels)
    val_name, val_clean = next(iter(evaluation_photos(source, "val", channels).items()))
    val_key = photo_key(val_name, val_clean)
    table, timing = {}, {}
    for sigma in EVAL_SIGMAS:
        val_noisy = add_noise(val_clean, sigma, [args.seed, sigma, 0])
        chosen = {
            method: classical_denoisers.tune(
                method, val_clean, val_noisy, sigma / 255.0, cache, [val_key, sigma, args.seed]
            )
            for method in (classical_denoisers.METHODS if args.baselines else [])
        }
        rows = collections.defaultdict(list)
        for index, (name, clean) in enumerate(test.items(), start=1):
            noisy = add_noise(clean, sigma, [args.seed, sigma, index])
            key = [photo_key(name, clean), sigma, args.seed]
            run = run_methods(model, chosen, clean, noisy, sigma, cache, key, args.tile_margin)
            for method, result in run:
                rows[method].append(result)
            if sigma == 25 and index == 1:
                timing = time_methods(model, chosen, clean, noisy, sigma, args.tile_margin)
        table[sigma] = {
            method: {
                "psnr": round(float(np.mean([r["psnr"] for r in results])), 3),
                "ssim": round(float(np.mean([r["ssim"] for r in results])), 4),
                **({"parameter": chosen[method]} if method in chosen else {}),
            }
            for method, results in rows.items()
        }
    first = next(iter(test))
    megapixels = test[first].shape[0] * test[first].shape[1] / 1e6
    per_megapixel = {
        method: round(seconds / megapixels, 3)
        for method, (_, seconds) in timing.items()
        if method in table[EVAL_SIGMAS[0]]
    }
    report = {
        "psnr_ssim": table,
        "seconds_per_megapixel": per_megapixel,
        "timed_on": f"{first}, sigma 25",
        "test_photos_as": "gray (luma)" if channels == 1 else "they are (colour and gray)",
        "tuned_on": val_name,
    }
    return report, {method: image for method, (image, _) in timing.items()}


def run_methods(model, chosen: dict, clean, noisy, sigma: float, cache, key: list, margin: int):
    """(method, {psnr, ssim}) for the noisy input, each classical method and the model."""
    yield "noisy", evaluate.image_quality(clean, noisy)
    for method, parameter in chosen.items():
        run = functools.partial(
            classical_denoisers.measure, method, parameter, clean, noisy, sigma / 255.0
        )
        yield method, cache.get_or_run(["test", method, parameter, *key], run)
    yield "model", evaluate.image_quality(clean, denoise(model, noisy, sigma, margin))


def time_methods(model, chosen: dict, clean, noisy, sigma: float, margin: int) -> dict:
    """(output, seconds) of every method on one photo, timed in this run (the cache
    keeps neither images nor times from another run); also the clean and noisy photo."""
    outputs = {"clean": (clean, 0.0), f"noisy (sigma {sigma})": (noisy, 0.0)}
    for method, parameter in chosen.items():
        function, _ = classical_denoisers.METHODS[method]
        started = time.perf_counter()
        denoised = function(noisy, sigma / 255.0, parameter)
        outputs[method] = (denoised, time.perf_counter() - started)
    denoise(model, noisy, sigma, margin)  # warm-up: the first call at a new size traces
    started = time.perf_counter()
    denoised = denoise(model, noisy, sigma, margin)
    outputs["model"] = (denoised, time.perf_counter() - started)
    return outputs


# -- main --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    source = photo_source(args)
    if args.evaluate:
        model = keras.saving.load_model(model_file(args.evaluate), compile=False, safe_mode=True)
        report, _ = compare_methods(model, args, source)
        print_summary(args.evaluate, report, time.perf_counter() - started)
        return args.evaluate
    model, channels = make_model(args)
    if args.tile_size % size_multiple(model) or args.patch_size % size_multiple(model):
        raise ValueError(
            f"--tile-size and --patch-size must be multiples of {size_multiple(model)}"
        )
    work_dir = Path(tempfile.mkdtemp(prefix="kerve-denoiser-"))
    history: dict[str, list[float]] = {}
    if args.epochs:
        train_model(model, args, channels, source, work_dir, history)
    report, samples = compare_methods(model, args, source)
    artifacts = ["test_samples.png"]
    plots.denoising_samples(samples, work_dir / "test_samples.png")
    if args.epochs:
        plots.learning_curves(history, work_dir / "learning_curves.png")
        artifacts += ["learning_curves.png", "history.csv"]
    elapsed = time.perf_counter() - started
    path = export.publish(
        model,
        make_manifest(args, channels, report, history, elapsed, source),
        args.out.parent,
        args.out.name,
        extra_files={name: work_dir / name for name in artifacts},
    )
    print_summary(path, report, elapsed)
    return path


def make_model(args: argparse.Namespace) -> tuple[keras.Model, int]:
    """The network to train (and its image channels): new, a published version, or
    scico's pretrained DnCNN; ``args`` takes the recipe of what it starts from."""
    channels = 1 if args.color == "gray" else 3
    if args.pretrained:
        spec = dncnn.VARIANTS[args.pretrained]
        model = dncnn.pretrained(args.pretrained, channels)
        args.arch, args.depth, args.channels = "dncnn", spec.depth, dncnn.WIDTH
        args.noise_map = spec.sigma_input
        dncnn.freeze_batchnorm(model)  # fine-tuning keeps the pretrained statistics
        colour = " for colour (luminance and chroma copies)" if channels == 3 else ""
        print(f"scico's DnCNN {args.pretrained}{colour} ({model.count_params():,} weights)")
    elif args.init:
        model = keras.saving.load_model(model_file(args.init), compile=False, safe_mode=True)
        channels, args.noise_map = model.inputs[0].shape[-1], len(model.inputs) > 1
        if (model_file(args.init).parent / kerve_manifest.MANIFEST_FILE).exists():
            recipe = kerve_manifest.read_manifest(model_file(args.init).parent).provenance
            args.arch, args.depth, args.channels = (
                recipe["arch"],
                recipe["depth"],
                recipe["channels"],
            )
        print(f"fine-tuning {args.init} ({model.count_params():,} weights)")
    else:
        model = build_model(args.arch, args.depth, args.channels, channels, args.noise_map)
        weights = model.count_params()
        print(f"{args.arch}: depth {args.depth}, width {args.channels}, {weights:,} weights")
    return model, channels


def train_model(model, args, channels: int, source, work_dir: Path, history: dict) -> None:
    """Fit on noisy patches; ``model`` ends with the weights of the best validation loss."""
    pool, (val_inputs, val_clean) = make_patches(args, channels, source)
    print(f"patches {args.patch_size} px: train {len(pool)}, validation {len(val_clean)}")
    train = pipeline.make_denoising_dataset(
        pool,
        args.sigma,
        args.batch_size,
        GRAY_FRACTION if channels == 3 else 0.0,
        args.noise_map,
        args.seed,
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        args.learning_rate, args.epochs * args.steps_per_epoch, alpha=0.02
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse", metrics=[psnr])
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            work_dir / "best.weights.h5",
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.CSVLogger(work_dir / "history.csv"),
    ]
    result = model.fit(
        train,
        steps_per_epoch=args.steps_per_epoch,
        epochs=args.epochs,
        validation_data=(val_inputs, val_clean),
        validation_batch_size=args.batch_size,
        callbacks=callbacks,
        verbose=args.verbose,
    )
    finetune.record(history, result)
    model.load_weights(work_dir / "best.weights.h5")


def make_manifest(args, channels: int, report: dict, history: dict, elapsed: float, source):
    sigma_25 = report["psnr_ssim"][25]
    return kerve_manifest.DenoisingManifest(
        input=kerve_manifest.InputSpec.scaled(args.tile_size, args.tile_size, channels, "unit"),
        denoising=kerve_manifest.DenoisingSpec(
            margin=args.tile_margin, sigma_range=tuple(args.sigma), sigma_input=args.noise_map
        ),
        batching=kerve_manifest.BatchingSpec(max_batch_size=8, max_queue=2048, timeout_ms=60_000),
        description=describe(args, channels),
        metrics={
            "test_psnr_sigma_25": sigma_25["model"]["psnr"],
            "test_ssim_sigma_25": sigma_25["model"]["ssim"],
            "test_photos": source.names("test"),
            **report,
        },
        provenance={
            "script": "training.denoiser",
            "dataset": (
                f"the photos in {args.data} (training/data/photo_folder.py; {source.how})"
                if args.data
                else "scikit-image, scikit-learn and Debian wallpaper photos "
                "(training/data/photos.py)"
            ),
            "train_photos": source.names("train"),
            "val_photos": source.names("val"),
            "arch": args.arch,
            "depth": args.depth,
            "channels": args.channels,
            "sigma": list(args.sigma),
            "noise_map": args.noise_map,
            "init": str(args.init) if args.init else None,
            **({"pretrained": pretrained_provenance(args, channels)} if args.pretrained else {}),
            "trained": bool(args.epochs),
            **finetune.patch_training_provenance(args, history, elapsed),
        },
    )


def describe(args, channels: int) -> str:
    noise = " (takes a noise map)" if args.noise_map else " (blind)"
    levels = f"sigma {args.sigma[0]:g}-{args.sigma[1]:g}{noise}"
    if not args.pretrained:
        return f"{args.arch} residual denoiser for {levels}, trained on real photos"
    what = f"scico's pretrained DnCNN {args.pretrained} (BSD-3-Clause)"
    if not args.epochs:
        return f"{what} for {'gray' if channels == 1 else 'colour'} images, {levels}, as it is"
    colour = "made colour (opponent space) and " if channels == 3 else ""
    return f"{what}, {colour}fine-tuned on real photos for {levels}"


def pretrained_provenance(args, channels: int) -> dict:
    return {
        "source": f"PyPI scico {dncnn.SCICO_VERSION} (BSD-3-Clause), "
        f"{dncnn.MPK_PATH.format(args.pretrained)}",
        "colour": (
            "opponent space (Y = mean RGB, C1 = (R-B)/2, C2 = (R-2G+B)/4): one copy for Y, one "
            "for both chroma planes, each told its plane's noise level; gray inputs (no chroma) "
            "get the gray network's answer (training/dncnn.py)"
            if channels == 3
            else None
        ),
        "batchnorm": "frozen (scico's inference statistics)",
    }


def model_file(path: Path) -> Path:
    """A published version folder or a .keras file, as the file to load."""
    path = Path(path)
    return path / kerve_manifest.MODEL_FILE if path.is_dir() else path


def print_summary(path: Path, report: dict, elapsed: float) -> None:
    print("\n" + "=" * 78)
    print(f"model      {path}")
    table = report["psnr_ssim"]
    print(f"{'PSNR dB / SSIM':24}" + "".join(f"sigma {s:<10}" for s in table))
    for method in table[EVAL_SIGMAS[0]]:
        cells = "".join(
            f"{table[s][method]['psnr']:6.2f} {table[s][method]['ssim']:.3f}  " for s in table
        )
        per_mp = report["seconds_per_megapixel"].get(method)
        print(f"{method:24}{cells}" + (f"{per_mp:8.3f} s/MP" if per_mp is not None else ""))
    print(f"took       {elapsed / 60:.1f} min; curves and samples beside the model")
    print("=" * 78)


def parse_sigma(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    low, high = float(low), float(high or low)
    if not 0 <= low <= high <= 255:
        raise argparse.ArgumentTypeError(
            "--sigma is LOW-HIGH (or one level), 0 <= LOW <= HIGH <= 255"
        )
    return low, high


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        return photo_folder.parse_fractions(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(DEFAULT_DEPTH), default="unet")
    parser.add_argument("--depth", type=int, help="DnCNN: conv layers (17); U-Net: levels (3)")
    parser.add_argument(
        "--channels", type=int, default=32, help="feature width (a U-Net's top level)"
    )
    parser.add_argument("--color", choices=["rgb", "gray"], default="rgb")
    parser.add_argument(
        "--sigma",
        type=parse_sigma,
        help="noise levels, e.g. 0-50 (default; a blind DnCNN published as it is: the "
        "range it covers, training/dncnn.py)",
    )
    parser.add_argument("--noise-map", action="store_true", help="non-blind: the model takes sigma")
    parser.add_argument(
        "--init",
        help="a published version (folder or .keras) to fine-tune, or scico's pretrained "
        "DnCNN: dncnn17-N (or dncnn6-/dncnn17- L, M, H: one noise level each; N takes sigma)",
    )
    parser.add_argument(
        "--evaluate", type=Path, help="only compare a published version with the classical methods"
    )
    parser.add_argument(
        "--data", type=Path, help="a folder of clean photos (any depth, size and format)"
    )
    parser.add_argument(
        "--split",
        type=parse_split,
        default=photo_folder.DEFAULT_FRACTIONS,
        help="--data: train,val,test fractions by photo (0.8,0.1,0.1), unless DIR has "
        "train/ and test/ folders",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=1024,
        help="--data: shrink longer photos to this long side (0: keep them as they are)",
    )
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument(
        "--epochs", type=int, default=20, help="0 with --init: publish it as it is, evaluated"
    )
    parser.add_argument("--steps-per-epoch", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--tile-size", type=int, default=256, help="the service's tile side")
    parser.add_argument("--tile-margin", type=int, default=32, help="context pixels per tile side")
    parser.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the classical methods (cached in --baseline-cache)",
    )
    parser.add_argument(
        "--baseline-cache", type=Path, default=Path.home() / ".cache/kerve/denoise-baselines.json"
    )
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--verbose", type=int, default=1, help="Keras progress: 0, 1 or 2")
    parser.add_argument("--out", type=Path, default=Path("models/denoiser"))
    args = parser.parse_args(argv)
    args.depth = args.depth or DEFAULT_DEPTH[args.arch]
    args.pretrained = dncnn.parse_init(args.init) if args.init else None
    if args.init and not args.pretrained:
        args.init = Path(args.init)
    if args.epochs == 0 and not args.init and not args.evaluate:
        parser.error("--epochs 0 publishes a model as it is: it needs --init")
    if args.sigma is None:
        blind_as_is = args.pretrained and not args.epochs
        args.sigma = dncnn.VARIANTS[args.pretrained].sigma_range if blind_as_is else DEFAULT_SIGMA
    return args


if __name__ == "__main__":
    main()
