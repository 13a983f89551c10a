"""The classical denoisers a model is measured against, each given a fair chance.

scikit-image's ``denoise_wavelet`` (BayesShrink), ``denoise_tv_chambolle`` and
``denoise_nl_means``, and BM3D (Dabov et al. 2007, PyPI ``bm3d``). Each is told the
true noise sigma (they are non-blind; the model is not told), and the free
parameter of each scikit-image method is tuned per sigma by grid search on the
validation photo, never on the test photos. BM3D runs with its default profile.

Images are float in [0, 1] (noise may push pixels outside), colour (h, w, 3) or
gray (h, w). Results are cached in a JSON file: they do not depend on the model,
and BM3D takes about a minute per megapixel here.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training import evaluate

CACHE_FORMAT = 1  # bump when a method or its grid changes


def wavelet(noisy: np.ndarray, sigma: float, parameter: Any) -> np.ndarray:
    import skimage.restoration

    name, ycbcr = parameter
    colour = noisy.ndim == 3
    return skimage.restoration.denoise_wavelet(
        noisy,
        sigma=sigma,
        wavelet=name,
        mode="soft",
        method="BayesShrink",
        rescale_sigma=True,
        channel_axis=-1 if colour else None,
        convert2ycbcr=bool(ycbcr and colour),
    )


def total_variation(noisy: np.ndarray, sigma: float, parameter: Any) -> np.ndarray:
    import skimage.restoration

    return skimage.restoration.denoise_tv_chambolle(
        noisy, weight=parameter * sigma, channel_axis=-1 if noisy.ndim == 3 else None
    )


def nl_means(noisy: np.ndarray, sigma: float, parameter: Any) -> np.ndarray:
    import skimage.restoration

    h_factor, patch_size = parameter
    return skimage.restoration.denoise_nl_means(
        noisy,
        h=h_factor * sigma,
        sigma=sigma,
        patch_size=patch_size,
        patch_distance=6,
        fast_mode=True,
        channel_axis=-1 if noisy.ndim == 3 else None,
    )


def bm3d(noisy: np.ndarray, sigma: float, parameter: Any) -> np.ndarray:
    import bm3d as bm3d_package

    if noisy.ndim == 3:
        return bm3d_package.bm3d_rgb(noisy, sigma)
    return bm3d_package.bm3d(noisy, sigma)


# name -> (function, the parameter grid searched on the validation photo)
METHODS: dict[str, tuple[Callable, list]] = {
    "wavelet (BayesShrink)": (
        wavelet,
        [(name, ycbcr) for name in ("db1", "db2", "sym4", "sym8") for ycbcr in (True, False)],
    ),
    "TV (Chambolle)": (total_variation, [0.4, 0.55, 0.7, 0.85, 1.0, 1.3, 1.7, 2.2, 2.8, 3.5, 4.5]),
    "NL-means": (
        nl_means,
        [(h, size) for h in (0.25, 0.35, 0.45, 0.55, 0.7, 0.85, 1.0) for size in (5, 7)],
    ),
    "BM3D": (bm3d, [None]),
}


class BaselineCache:
    """A JSON file of results keyed by method, parameter, photo, sigma and noise seed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            self.entries = json.loads(self.path.read_text(encoding="utf-8"))

    def get_or_run(self, key: list, run: Callable[[], dict]) -> dict:
        digest = hashlib.sha256(json.dumps([CACHE_FORMAT, *key]).encode()).hexdigest()[:24]
        if digest not in self.entries:
            self.entries[digest] = run()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.entries), encoding="utf-8")
        return self.entries[digest]


def measure(
    method: str, parameter: Any, clean: np.ndarray, noisy: np.ndarray, sigma: float
) -> dict:
    """Run one method once: PSNR, SSIM and seconds."""
    function, _ = METHODS[method]
    started = time.perf_counter()
    denoised = function(noisy, sigma, parameter)
    seconds = time.perf_counter() - started
    return {**evaluate.image_quality(clean, denoised), "seconds": seconds}


def tune(
    method: str, clean: np.ndarray, noisy: np.ndarray, sigma: float, cache: BaselineCache, key: list
) -> Any:
    """The grid's parameter with the best PSNR on one (validation) photo."""
    _, grid = METHODS[method]
    if len(grid) == 1:
        return grid[0]
    scores = [
        cache.get_or_run(
            ["tune", method, parameter, *key],
            lambda p=parameter: measure(method, p, clean, noisy, sigma),
        )["psnr"]
        for parameter in grid
    ]
    return grid[int(np.argmax(scores))]
