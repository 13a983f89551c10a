"""scico's pretrained DnCNN denoisers in Keras 3, read from the wheel without scico.

scico (PyPI, BSD-3-Clause, https://github.com/lanl/scico) ships eight greyscale DnCNNs
(Zhang et al. 2017) trained on images in [0, 1], as flax msgpack files in
``scico/data/flax/dncnn{6,17}{L,M,H,N}.mpk``: 6 or 17 layers; L, M and H each trained at
one noise level (sigma 0.06, 0.10 and 0.20 of the range: 15.3, 25.5 and 51 pixel levels,
scico/data/flax/README.rst); N takes the noise level as a second input channel, a
constant plane holding sigma in [0, 1] units, trained on sigma 0-0.2 (scico/denoiser.py).
That is the service's noise map (sigma / 255 per pixel), so the N variants serve with
``sigma_input=True`` as they are.

The network (scico/flax/_models.py DnCNNNet, blocks.py ConvBNBlock): a 3x3 conv of 64
filters + ReLU, depth-2 blocks of 3x3 conv + BatchNorm (inference statistics, epsilon
1e-5) + ReLU, a last 3x3 conv that predicts the noise, subtracted from the input. No
conv has a bias. Channels last; for N, channel 0 is the image and channel 1 the sigma
plane, and only output channel 0 is the image (the second one is discarded), so the Keras
network's last conv keeps only the first output filter.

Padding: scico's convs pad circularly (the image wraps around); Keras has no circular
padding, so this network pads with zeros ("same"). They agree wherever the 17-layer
receptive field (17 pixels each way) stays inside the input, and the service always
gives a model that much mirrored context: tiles carry a margin of at least
``RECEPTIVE_RADIUS`` and the image is mirrored at its edges (service/tiling.py).
tests/training/test_dncnn.py checks scico's own output within 1e-4 by wrapping the
input by that radius first (tests/fixtures/make_dncnn_fixture.py made the fixture).

Colour (``pretrained(variant, image_channels=3)``), as colour BM3D does it: RGB goes to
an opponent space, luminance Y = (R + G + B) / 3 and two chroma planes C1 = (R - B) / 2,
C2 = (R - 2G + B) / 4 (each + 0.5, inside [0, 1] like a photo); one copy of the gray
network denoises Y, a second copy (one set of weights) each chroma plane, and the inverse
transform gives RGB back. Independent noise of sigma in R, G and B is noise of sigma/sqrt(3)
in Y, sigma/sqrt(2) in C1 and sigma*sqrt(6)/4 in C2, and an N network is told exactly
that. A gray image sent as three equal channels carries one noise plane: it has no chroma
at all, and its Y has the whole sigma. Fixed layers see that (chroma below a quarter of a
pixel level over 5x5) and tell the luminance network sigma there, so that a gray upload
gets exactly the gray network's answer (mean(R, G, B) of the output is Y's). Both copies
start from scico's weights and are fine-tuned together (training/denoiser.py ``--init
dncnn17-N``); the colour transforms stay fixed. It costs three gray passes per pixel.
Measured before settling on this, on 192-pixel crops of four colour photos at sigma 25:
widening the first and last conv of one network instead (the image kernel split in thirds,
the noise filter repeated) starts at 21.7 dB, barely above the noisy input's 20.7, and 250
fine-tuning steps moved its validation PSNR by 0.07 dB; this design starts at 30.9 dB
(colour BM3D: 31.6), each RGB channel through the gray network alone at 28.7.

The wheel is fetched once with ``pip download --no-deps scico==0.0.7`` into
``~/.cache/kerve/pypi`` ($KERVE_PYPI_CACHE); an installed scico is used instead where
there is one.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import msgpack
import numpy as np

SCICO_VERSION = "0.0.7"
BN_EPSILON = 1e-5  # flax.linen.BatchNorm as scico configures it
WIDTH = 64
RECEPTIVE_RADIUS = {6: 6, 17: 17}  # pixels each way: one per 3x3 conv
MPK_PATH = "scico/data/flax/dncnn{}.mpk"
FLAX_NDARRAY, FLAX_NPSCALAR = 1, 3  # flax.serialization's msgpack extension type codes
INIT_NAME = re.compile(r"^dncnn(6|17)-?([LMHN])$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Variant:
    depth: int
    sigma_input: bool
    trained_sigma: tuple[float, float]  # pixel levels, as scico trained it
    sigma_range: tuple[float, float]  # pixel levels it is published for (see SIGMA_RANGES)


# The noise levels each variant is published for. N: what scico trained it on. L, M, H:
# where it is the best of its depth's three and better than the noisy input itself, on
# the gray validation photos (256x256 centres; `python -m training.dncnn --coverage
# --depth 17|6 --sigmas 5,6,...` printed mean PSNRs at whole levels 5-60; each bound
# lies half-way between two measured levels, H's top is the last level measured).
SIGMA_RANGES = {
    "17L": (7.5, 18.5), "17M": (18.5, 32.5), "17H": (32.5, 60.0), "17N": (0.0, 51.0),
    "6L": (7.5, 20.5), "6M": (20.5, 32.5), "6H": (32.5, 60.0), "6N": (0.0, 51.0),
}  # fmt: skip
TRAINED = {"L": (15.3, 15.3), "M": (25.5, 25.5), "H": (51.0, 51.0), "N": (0.0, 51.0)}
VARIANTS = {
    f"{depth}{level}": Variant(depth, level == "N", TRAINED[level], SIGMA_RANGES[f"{depth}{level}"])
    for depth in (6, 17)
    for level in "LMHN"
}


def parse_init(text: str) -> str | None:
    """The variant ("17N") that an --init such as dncnn17-N, dncnn17N or dncnn6-m names."""
    match = INIT_NAME.match(str(text))
    return f"{match.group(1)}{match.group(2).upper()}" if match else None


# -- the weights ------------------------------------------------------------------------
def pypi_cache() -> Path:
    return Path(os.environ.get("KERVE_PYPI_CACHE", Path.home() / ".cache/kerve/pypi"))


def find_weights(variant: str, cache_dir: Path | None = None) -> tuple[Path, str] | None:
    """(file, member) of the variant's .mpk: an installed scico's file, or inside the
    cached wheel (member ""/a path); None when neither is here."""
    spec = importlib.util.find_spec("scico")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))).parent
        path = installed / MPK_PATH.format(variant)
        if path.is_file():
            return path, ""
    wheels = sorted(Path(cache_dir or pypi_cache()).glob(f"scico-{SCICO_VERSION}-*.whl"))
    return (wheels[-1], MPK_PATH.format(variant)) if wheels else None


def fetch_wheel(cache_dir: Path | None = None) -> Path:
    """Download scico's wheel (no dependencies) into the cache; the wheel's path."""
    cache = Path(cache_dir or pypi_cache())
    cache.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", str(cache), f"scico=={SCICO_VERSION}"]  # fmt: skip
    print(f"dncnn: fetching scico {SCICO_VERSION} from PyPI into {cache}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(cache.glob(f"scico-{SCICO_VERSION}-*.whl"))
    if result.returncode or not wheels:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise FileNotFoundError(
            f"scico's DnCNN weights need the PyPI wheel scico=={SCICO_VERSION}, and "
            f"`{' '.join(command[2:])}` failed: {reason[0]}"
        )
    return wheels[-1]


def load_variables(variant: str, cache_dir: Path | None = None, fetch: bool = True) -> dict:
    """The variant's flax variables {"params": ..., "batch_stats": ...} as numpy."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown DnCNN variant {variant!r}; scico has {', '.join(VARIANTS)}")
    found = find_weights(variant, cache_dir)
    if found is None:
        if not fetch:
            raise FileNotFoundError(
                f"no scico {SCICO_VERSION} wheel in {cache_dir or pypi_cache()}"
            )
        found = (fetch_wheel(cache_dir), MPK_PATH.format(variant))
    path, member = found
    if member:
        with zipfile.ZipFile(path) as wheel:
            return read_variables(wheel.read(member))
    return read_variables(path.read_bytes())


def read_variables(data: bytes) -> dict:
    """A flax msgpack file (flax.serialization.msgpack_serialize) as nested dicts of numpy.

    flax writes each array as a msgpack extension of type 1 (type 3 for a numpy scalar)
    holding the msgpack of (shape, dtype name, C-order bytes).
    """

    def decode(code: int, payload: bytes):
        if code not in (FLAX_NDARRAY, FLAX_NPSCALAR):
            return msgpack.ExtType(code, payload)
        shape, dtype, buffer = msgpack.unpackb(payload, raw=True)
        array = np.frombuffer(buffer, dtype=np.dtype(dtype.decode())).reshape(shape)
        return array.copy() if code == FLAX_NDARRAY else array[()]

    return msgpack.unpackb(data, ext_hook=decode, raw=False, strict_map_key=False)


# -- the network --------------------------------------------------------------------------
def build(
    depth: int = 17,
    image_channels: int = 1,
    sigma_input: bool = False,
    width: int = WIDTH,
    name: str | None = None,
) -> keras.Model:
    """scico's DnCNNNet with random weights: (batch, h, w, channels) in [0, 1] -> the same
    shape; with ``sigma_input`` a second input, the (batch, h, w, 1) sigma / 255 map."""
    image = keras.Input((None, None, image_channels), name="image")
    inputs = [image]
    x = image
    if sigma_input:
        inputs.append(keras.Input((None, None, 1), name="noise_map"))
        x = keras.layers.Concatenate(name="with_noise_map")(inputs)
    conv = {"kernel_size": 3, "padding": "same", "use_bias": False}
    x = keras.layers.Conv2D(width, activation="relu", name="conv_start", **conv)(x)
    for index in range(depth - 2):
        x = keras.layers.Conv2D(width, name=f"block_{index}_conv", **conv)(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block_{index}_bn")(x)
        x = keras.layers.ReLU(name=f"block_{index}_relu")(x)
    noise = keras.layers.Conv2D(image_channels, name="noise", **conv)(x)
    denoised = keras.layers.Subtract(name="denoised")([image, noise])
    return keras.Model(inputs if sigma_input else image, denoised, name=name or f"dncnn{depth}")


def assign(model: keras.Model, variables: dict) -> None:
    """Set ``model`` (a gray network from ``build``) from scico's flax variables."""
    params, stats = variables["params"], variables["batch_stats"]
    blocks = sorted(params.keys() - {"conv_start", "conv_end"}, key=_block_index)
    expected = [f"ConvBNBlock_{index}" for index in range(len(blocks))]
    if blocks != expected or len(blocks) != _depth(model) - 2:
        raise ValueError(
            f"the weights hold {len(blocks)} conv+BN blocks, the model {_depth(model) - 2}"
        )
    # (3, 3, 1 or 2, width): the image, then the sigma plane, as the Keras input order
    _set(model.get_layer("conv_start"), [params["conv_start"]["kernel"]])
    for index, block in enumerate(blocks):
        _set(model.get_layer(f"block_{index}_conv"), [params[block]["Conv_0"]["kernel"]])
        norm, moments = params[block]["BatchNorm_0"], stats[block]["BatchNorm_0"]
        _set(
            model.get_layer(f"block_{index}_bn"),
            [norm["scale"], norm["bias"], moments["mean"], moments["var"]],
        )
    end = params["conv_end"]["kernel"]  # (3, 3, width, 1 or 2): output 0 is the image's
    _set(model.get_layer("noise"), [end[..., :1]])


# RGB -> (Y, C1, C2), and the offsets that bring the chroma planes into [0, 1]
OPPONENT = np.array([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0, -1 / 2], [1 / 4, -1 / 2, 1 / 4]])
OPPONENT_OFFSET = np.array([0.0, 0.5, 0.5])
GRAY_CHROMA = 1 / 1024  # mean |C1| + |C2| over GATE_WINDOW below this: one noise plane
GATE_WINDOW = 5


def build_colour(gray_networks: tuple[keras.Model, keras.Model], sigma_input: bool) -> keras.Model:
    """RGB through two gray networks (luminance, chroma) in opponent space (docstring)."""
    luminance, chroma = gray_networks
    image = keras.Input((None, None, 3), name="image")
    fixed = {"use_bias": False, "trainable": False}
    opponent = keras.layers.Conv2D(3, 1, trainable=False, name="to_opponent")(image)
    planes = [keras.layers.Conv2D(1, 1, name=f"plane_{k}", **fixed)(opponent) for k in range(3)]
    if not sigma_input:
        denoised = [luminance(planes[0]), chroma(planes[1]), chroma(planes[2])]
        rgb = keras.layers.Conv2D(3, 1, trainable=False, name="to_rgb")(
            keras.layers.Concatenate(name="denoised_planes")(denoised)
        )
        model = keras.Model(image, rgb, name="dncnn_opponent")
        _set_colour_transforms(model)
        return model
    noise_map = keras.Input((None, None, 1), name="noise_map")
    # 1 where the image has no chroma at all (a gray image: one noise plane), else 0
    signs = keras.layers.Conv2D(4, 1, activation="relu", name="chroma_parts", **fixed)(image)
    magnitude = keras.layers.Conv2D(1, 1, name="chroma_magnitude", **fixed)(signs)
    local = keras.layers.AveragePooling2D(GATE_WINDOW, 1, "same", name="chroma_local")(magnitude)
    gray = keras.layers.ReLU(name="gray_gate")(
        keras.layers.Rescaling(-1 / GRAY_CHROMA, offset=1.0, name="gray_test")(local)
    )
    share = keras.layers.Rescaling(1 - 3**-0.5, offset=3**-0.5, name="luminance_share")(gray)
    sigmas = [
        keras.layers.Multiply(name="luminance_sigma")([noise_map, share]),
        keras.layers.Rescaling(2**-0.5, name="chroma_1_sigma")(noise_map),
        keras.layers.Rescaling(6**0.5 / 4, name="chroma_2_sigma")(noise_map),
    ]
    denoised = [
        luminance([planes[0], sigmas[0]]),
        chroma([planes[1], sigmas[1]]),
        chroma([planes[2], sigmas[2]]),
    ]
    rgb = keras.layers.Conv2D(3, 1, trainable=False, name="to_rgb")(
        keras.layers.Concatenate(name="denoised_planes")(denoised)
    )
    model = keras.Model([image, noise_map], rgb, name="dncnn_opponent")
    _set_colour_transforms(model)
    return model


def _set_colour_transforms(model: keras.Model) -> None:
    inverse = np.linalg.inv(OPPONENT)
    _set(model.get_layer("to_opponent"), [OPPONENT.T[None, None], OPPONENT_OFFSET])
    _set(model.get_layer("to_rgb"), [inverse.T[None, None], -inverse @ OPPONENT_OFFSET])
    for k in range(3):
        _set(model.get_layer(f"plane_{k}"), [np.eye(3)[:, k].reshape(1, 1, 3, 1)])
    if "chroma_parts" in [layer.name for layer in model.layers]:
        parts = np.stack([OPPONENT[1], -OPPONENT[1], OPPONENT[2], -OPPONENT[2]], axis=1)
        _set(model.get_layer("chroma_parts"), [parts[None, None]])
        _set(model.get_layer("chroma_magnitude"), [np.ones((1, 1, 4, 1))])


def pretrained(
    variant: str, image_channels: int = 1, cache_dir: Path | None = None, fetch: bool = True
) -> keras.Model:
    """scico's ``variant`` ("17N", ...) in Keras: the gray network, or the colour one
    made of two copies of it (module docstring)."""
    spec = VARIANTS[variant]
    variables = load_variables(variant, cache_dir, fetch)
    networks = []
    for name in ("luminance", "chroma") if image_channels == 3 else ("dncnn",):
        network = build(spec.depth, 1, spec.sigma_input, name=name)
        assign(network, variables)
        networks.append(network)
    return build_colour(tuple(networks), spec.sigma_input) if image_channels == 3 else networks[0]


def freeze_batchnorm(model: keras.Model) -> None:
    """Keep every BatchNorm (nested networks' too) on scico's statistics while fine-tuning."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            freeze_batchnorm(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _set(layer, values: list[np.ndarray]) -> None:
    wanted = [tuple(weight.shape) for weight in layer.weights]
    got = [tuple(np.shape(value)) for value in values]
    if wanted != got:
        raise ValueError(f"layer {layer.name}: the weights are {got}, the layer takes {wanted}")
    layer.set_weights([np.asarray(value, np.float32) for value in values])


def _block_index(name: str) -> int:
    return int(name.rpartition("_")[2]) if name.startswith("ConvBNBlock_") else -1


def _depth(model: keras.Model) -> int:
    return sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers)


def ensure_available(cache_dir: Path | None = None) -> str | None:
    """None when scico's weights are here or could be fetched; else why not, in words."""
    if find_weights("17N", cache_dir) is not None:
        return None
    try:
        fetch_wheel(cache_dir)
    except FileNotFoundError as error:
        return str(error)
    return None


# -- which noise levels each blind variant is for -------------------------------------------
def coverage(depth: int, sigmas, seed: int = 1337, crop: int = 256) -> dict[int, dict]:
    """Mean PSNR of the noisy input and of the L, M and H variants on the gray validation
    photos (their central ``crop`` x ``crop``) at each sigma; where a variant is the best
    of them all is the range it is published for (SIGMA_RANGES)."""
    from training import denoiser, evaluate
    from training.data import photos

    clean = {n: _centre(photos.as_gray(p), crop) / 255.0 for n, p in photos.load("val").items()}
    models = {level: pretrained(f"{depth}{level}") for level in "LMH"}
    table = {}
    for sigma in sigmas:
        scores = collections.defaultdict(list)
        for index, image in enumerate(clean.values()):
            noisy = denoiser.add_noise(image, sigma, [seed, sigma, index])
            scores["noisy"].append(evaluate.image_quality(image, noisy)["psnr"])
            for level, model in models.items():
                denoised = denoiser.denoise(model, noisy, sigma, RECEPTIVE_RADIUS[depth])
                scores[level].append(evaluate.image_quality(image, denoised)["psnr"])
        table[sigma] = {method: float(np.mean(values)) for method, values in scores.items()}
        best = max(table[sigma], key=table[sigma].get)
        cells = "  ".join(f"{method} {psnr:6.2f}" for method, psnr in table[sigma].items())
        print(f"sigma {sigma:3d}: {cells}   best {best}", flush=True)
    return table


def _centre(image: np.ndarray, size: int) -> np.ndarray:
    top, left = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
    return image[top : top + size, left : left + size]


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="scico's DnCNN: " + __doc__.splitlines()[0])
    parser.add_argument(
        "--coverage",
        action="store_true",
        help="measure where each blind variant (L, M, H) is the best of the three",
    )
    parser.add_argument("--depth", type=int, choices=[6, 17], default=17)
    parser.add_argument(
        "--sigmas", default="5,10,15,20,25,30,35,40,45,50,55,60", help="--coverage: levels"
    )
    parser.add_argument("--fetch", action="store_true", help="only fetch the wheel")
    args = parser.parse_args(argv)
    if args.fetch or not args.coverage:
        print(find_weights("17N") or fetch_wheel())
    if args.coverage:
        coverage(args.depth, [int(sigma) for sigma in args.sigmas.split(",")])


if __name__ == "__main__":
    main()
