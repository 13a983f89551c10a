"""Publish pretrained super-resolution models from npm (UpscalerJS), converted to Keras 3.

    python -m training.pretrained_upscalers --model esrgan-slim-x4 --out models/upscaler
    python -m training.pretrained_upscalers --list

The sources are npm packages (MIT), fetched once with ``npm pack`` into
``~/.cache/kerve/npm`` and read with numpy (training/tfjs_layers.py):

- ``@upscalerjs/esrgan-slim`` and ``@upscalerjs/esrgan-medium``: TF.js layers models
  at x2, x3, x4 (and x8) of a residual dense network (RDN, Zhang et al. 2018) trained
  on DIV2K, pixels 0..255 in and out; each package ships a fixture image and
  UpscalerJS's own outputs for it at 2x, 3x and 4x;
- ``@upscalerjs/models``: idealo's RDN ``psnr-small`` (x2, pixels in [0, 1]) as the
  original Keras 2 ``.h5``, beside UpscalerJS's uint8-quantized TF.js copy of it.

Nothing is published unverified: an ESRGAN model must reproduce the package's
sample output from its fixture at MIN_FIXTURE_PSNR dB or more; idealo's .h5, which
has no sample, must agree with the package's quantized copy at MIN_TWIN_PSNR dB.
The margin of the service's tiles is the network's receptive radius (read from its
layer graph), and the tiled output is measured against the whole-image output.
The held-out real photos (training/data/photos.py) are then shrunk and upscaled
back by the model, by bicubic and by Lanczos, and PSNR/SSIM recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import kerve_manifest  # noqa: E402
from training import evaluate, export, tfjs_layers, upscaler  # noqa: E402
from training.data import photos  # noqa: E402

NPM_CACHE = Path.home() / ".cache/kerve/npm"
MIN_FIXTURE_PSNR = 40.0  # dB against the package's own output for its fixture
MIN_TWIN_PSNR = 40.0  # dB between the .h5 and the package's quantized TF.js copy
NPM_TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class Package:
    name: str
    version: str
    licence: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def folder(self) -> str:
        """Its folder in the cache: ``upscalerjs-esrgan-slim-1.0.0``."""
        return f"{self.name.removeprefix('@').replace('/', '-')}-{self.version}"


@dataclasses.dataclass(frozen=True)
class Pretrained:
    package: Package
    path: str  # the model inside the package: a TF.js model.json or a Keras 2 .h5
    scale: int
    scaling: str  # kerve_manifest.PIXEL_SCALINGS: "raw" for 0..255, "unit" for [0, 1]
    about: str
    tile: int  # the service's tile side (low-res pixels): see TILES
    twin: str | None = None  # a TF.js copy of the same network to check an .h5 against

    def provenance(self) -> dict:
        return {
            "source": f"npm {self.package.spec}",
            "file": self.path,
            "licence": self.package.licence,
            "trained": False,
        }


ESRGAN_SLIM = Package("@upscalerjs/esrgan-slim", "1.0.0", "MIT")
ESRGAN_MEDIUM = Package("@upscalerjs/esrgan-medium", "1.0.0", "MIT")
UPSCALERJS_MODELS = Package("@upscalerjs/models", "0.9.0", "MIT")
IDEALO_DIR = "models/idealo/psnr-small-quant-uint8"
# Tile sides: tiles carry margins of the receptive radius (10 px slim, 18 medium, 38 idealo),
# so larger tiles waste less; measured on 2 cores (batches of 4), slim gains nothing past
# 128 px, medium and idealo up to 192 px. Larger tiles also cost a small image more padding.
TILES = {"slim": 128, "medium": 192, "idealo": 192}
# x8 is left out: the packages have no x8 sample output to verify it against.
MODELS: dict[str, Pretrained] = {
    **{
        f"esrgan-{size}-x{scale}": Pretrained(
            package,
            f"models/x{scale}/model.json",
            scale,
            "raw",
            f"UpscalerJS ESRGAN {size} x{scale} (an RDN trained on DIV2K, {blocks} dense blocks)",
            TILES[size],
        )
        for size, package, blocks in (("slim", ESRGAN_SLIM, 2), ("medium", ESRGAN_MEDIUM, 10))
        for scale in (2, 3, 4)
    },
    "idealo-rdn-x2": Pretrained(
        UPSCALERJS_MODELS,
        f"{IDEALO_DIR}/image-super-resolution-psnr-small.h5",
        2,
        "unit",
        "idealo image-super-resolution RDN psnr-small x2 (trained on DIV2K)",
        TILES["idealo"],
        twin=f"{IDEALO_DIR}/model.json",
    ),
}


class NpmMissing(RuntimeError):
    """npm is needed to fetch a package that is not in the cache yet."""


# -- fetching ----------------------------------------------------------------------------
def fetch(package: Package, cache: Path = NPM_CACHE) -> Path:
    """The unpacked package (its ``package.json`` folder), from the cache or ``npm pack``."""
    target = Path(cache) / package.folder
    if (target / "package.json").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise NpmMissing(
            f"npm is not installed (apt-get install npm); it fetches {package.spec} into {cache}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as work:
        result = subprocess.run(
            [npm, "pack", package.spec, "--silent"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
        )
        tarballs = list(Path(work).glob("*.tgz"))
        if result.returncode or len(tarballs) != 1:
            reason = (result.stderr.strip().splitlines() or ["no tarball"])[-1]
            raise RuntimeError(f"npm pack {package.spec} failed: {reason}")
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(Path(work) / "unpacked", filter="data")
        try:  # atomic: a half-unpacked package never looks cached
            os.replace(Path(work) / "unpacked" / "package", target)
        except OSError:
            if not (target / "package.json").is_file():  # not another process, first
                raise
    return target


def ensure_available(cache: Path = NPM_CACHE) -> str | None:
    """Why the npm models cannot be built here, or None when they can."""
    packages = {pretrained.package for pretrained in MODELS.values()}
    if shutil.which("npm") or all((cache / p.folder / "package.json").is_file() for p in packages):
        return None
    return "npm is not installed (apt-get install npm); it fetches the @upscalerjs packages"


# -- conversion and verification ---------------------------------------------------------
def convert(name: str, cache: Path = NPM_CACHE) -> tuple[keras.Model, Pretrained]:
    """The Keras 3 model of ``MODELS[name]`` (fetched if needed), not yet verified."""
    pretrained = MODELS[name]
    folder = fetch(pretrained.package, cache)
    path = folder / pretrained.path
    if path.suffix == ".h5":
        model = keras.saving.load_model(path, compile=False)
    else:
        model = tfjs_layers.load(path)
    _, scale = upscaler.receptive_field(model)
    if scale != pretrained.scale:
        raise ValueError(f"{name}: the network upscales x{scale}, not x{pretrained.scale}")
    return model, pretrained


def verify(model: keras.Model, pretrained: Pretrained, cache: Path = NPM_CACHE) -> dict:
    """How the converted model matches its package's reference; raises below the bar."""
    folder = fetch(pretrained.package, cache)
    scaling = upscaler.Scaling(*kerve_manifest.PIXEL_SCALINGS[pretrained.scaling])
    if pretrained.twin:
        twin = tfjs_layers.load(folder / pretrained.twin)
        image = np.asarray(Image.fromarray(photos.read_photo("astronaut")).resize((128, 128)))
        expected = scaling.to_pixels(twin.predict_on_batch(scaling.to_model(image)[np.newaxis]))
        against, minimum = f"{pretrained.twin} (uint8-quantized TF.js copy)", MIN_TWIN_PSNR
    else:
        image = read_rgb(folder / "assets/fixture.png")
        expected = read_rgb(folder / f"assets/samples/{pretrained.scale}x/result.png")[np.newaxis]
        against, minimum = f"assets/samples/{pretrained.scale}x/result.png", MIN_FIXTURE_PSNR
    output = scaling.to_pixels(model.predict_on_batch(scaling.to_model(image)[np.newaxis]))
    if output.shape != expected.shape:
        raise ValueError(f"output {output.shape[1:]} but the reference is {expected.shape[1:]}")
    quality = evaluate.image_quality(expected[0] / 255.0, output[0] / 255.0)
    report = {
        "against": against,
        "psnr": round(quality["psnr"], 2),
        "ssim": round(quality["ssim"], 5),
        "max_abs_difference_levels": int(np.abs(output.astype(int) - expected).max()),
        "minimum_psnr": minimum,
    }
    if quality["psnr"] < minimum:
        raise RuntimeError(f"verification failed: {report}")
    return report


def read_rgb(path: Path) -> np.ndarray:
    """An image as RGB uint8; transparent pixels are refused (they would need compositing)."""
    with Image.open(path) as image:
        if "A" in image.getbands() and image.getchannel("A").getextrema()[0] < 255:
            raise ValueError(f"{path} has transparent pixels")
        return np.asarray(image.convert("RGB"))


# -- main --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    if args.list:
        for name, pretrained in MODELS.items():
            print(f"{name:20} {pretrained.package.spec:32} {pretrained.about}")
        return None
    started = time.perf_counter()
    model, pretrained = convert(args.model, args.cache)
    fixture = verify(model, pretrained, args.cache)
    print(f"{args.model}: converted, {model.count_params():,} weights; matches "
          f"{fixture['against']} at {fixture['psnr']:.2f} dB")  # fmt: skip
    scale = pretrained.scale
    scaling = upscaler.Scaling(*kerve_manifest.PIXEL_SCALINGS[pretrained.scaling])
    radius, _ = upscaler.receptive_field(model)
    margin = args.margin if args.margin is not None else math.ceil(radius)
    args.tile_size = args.tile_size or pretrained.tile
    if 2 * margin >= args.tile_size:
        raise ValueError(
            f"--tile-size {args.tile_size} leaves no centre inside margins of {margin}"
        )
    test = {name: photos.as_rgb(photo) for name, photo in photos.load("test").items()}
    # Tiles must stitch into the whole-image result; smaller margins show what it takes.
    check_image = next(iter(test.values()))
    margins = sorted({m for m in (0, 4, 8, margin // 2, margin) if m <= margin})
    tiling = upscaler.tiling_check(model, check_image, scale, scaling, args.tile_size, margins)
    report, samples = upscaler.compare_methods(
        {"model": model}, test, scale, scaling, args.tile_size, margin
    )
    report["tiling"] = {
        "margin": margin,
        "receptive_radius": round(radius, 3),
        "max_abs_difference_levels": tiling[margin],
        "by_margin": tiling,
        "checked_on": f"{next(iter(test))}, a crop needing 3x3 tiles of {args.tile_size} px",
    }
    work_dir = Path(tempfile.mkdtemp(prefix="kerve-upscaler-"))
    upscaler.side_by_side(samples, work_dir / "test_samples.png")
    table = report["psnr_ssim"]
    gain = table["model"]["psnr"] - table["bicubic"]["psnr"]
    manifest = kerve_manifest.UpscalingManifest(
        input=kerve_manifest.InputSpec(
            height=args.tile_size, width=args.tile_size, mean=[scaling.mean], std=[scaling.std]
        ),
        upscaling=kerve_manifest.UpscalingSpec(scale=scale, margin=margin),
        batching=kerve_manifest.BatchingSpec(max_batch_size=4, max_queue=1024, timeout_ms=60_000),
        default_for_task=args.default,
        description=f"{pretrained.about}, converted from npm {pretrained.package.spec}, not "
        f"retrained; {gain:+.2f} dB over bicubic on held-out photos",
        metrics={
            "test_psnr": table["model"]["psnr"],
            "test_ssim": table["model"]["ssim"],
            "test_psnr_bicubic": table["bicubic"]["psnr"],
            "test_photos": list(test),
            "evaluation": f"each test photo (centre crop <= {upscaler.EVAL_MAX_SIDE} px) shrunk "
            f"x{scale} with bicubic, upscaled back, compared in RGB",
            "verification": fixture,
            **report,
        },
        provenance={
            "script": "training.pretrained_upscalers",
            "model": args.model,
            **pretrained.provenance(),
        },
    )
    path = export.publish(
        model,
        manifest,
        args.out.parent,
        args.out.name,
        extra_files={"test_samples.png": work_dir / "test_samples.png"},
    )
    upscaler.print_summary(path, report, time.perf_counter() - started)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="esrgan-slim-x4")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--tile-size", type=int, help="low-res tile side (default: TILES)")
    parser.add_argument(
        "--margin", type=int, help="context pixels per tile side (default: the receptive radius)"
    )
    parser.add_argument("--default", action="store_true", help="answer the plain /v1/upscale route")
    parser.add_argument("--cache", type=Path, default=NPM_CACHE, help="where npm packages go")
    parser.add_argument("--out", type=Path, default=Path("models/upscaler"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
