"""What a right answer looks like, per endpoint: a wrong one is a failure too.

Each ``check_*`` takes the response's status, headers and JSON body and returns
why the response is wrong, or None. Nothing here imports locust (whose import
patches the standard library), so the checks can be tested on their own.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Mapping
from typing import Any

from PIL import Image

OVERLOADED = "overloaded (503)"
DEADLINE = "deadline passed (504)"


def check_status(status: int, headers: Mapping[str, str], body: Any) -> str | None:
    """Anything but a 200: a 503 and a 504 get names of their own, so a shedding
    server shows as such in the stats, apart from real errors."""
    if status == 200:
        return None
    if status == 503:
        return OVERLOADED if _header(headers, "retry-after") else "503 without Retry-After"
    if status == 504:
        return DEADLINE
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    return f"HTTP {status}" + (f" ({code})" if code else "")


def check_classify(body: Any, images: int) -> str | None:
    predictions = _list(body, "predictions", images, "{} prediction lists for {} images")
    if isinstance(predictions, str):
        return predictions
    for ranked in predictions:
        if not isinstance(ranked, list) or not ranked:
            return "an empty prediction list"
        for prediction in ranked:
            if not (
                isinstance(prediction, dict)
                and isinstance(prediction.get("label"), str)
                and isinstance(prediction.get("index"), int)
                and _is_probability(prediction.get("score"))
            ):
                return f"a malformed prediction: {str(prediction)[:80]}"
        scores = [prediction["score"] for prediction in ranked]
        if scores != sorted(scores, reverse=True):
            return "predictions not best first"
    return None


def check_segment(body: Any, width: int, height: int) -> str | None:
    if not isinstance(body, dict) or (body.get("width"), body.get("height")) != (width, height):
        return f"not a {width}x{height} segmentation"
    labels = _field(body, "labels", list)
    if isinstance(labels, str) or not labels:
        return labels or "no labels"
    fractions = _field(body, "class_fractions", dict)
    if isinstance(fractions, str):
        return fractions
    if not set(fractions) <= set(labels) or not math.isclose(
        sum(fractions.values()), 1.0, abs_tol=1e-3
    ):
        return "class fractions do not sum to 1 over the labels"
    return check_png(body.get("mask"), width, height, "mask")


def check_caption(body: Any, images: int) -> str | None:
    captions = _list(body, "captions", images, "{} captions for {} images")
    if isinstance(captions, str):
        return captions
    for caption in captions:
        text = caption.get("caption") if isinstance(caption, dict) else None
        if not isinstance(text, str) or not text.strip():
            return "an empty caption"
        if not isinstance(caption.get("log_prob"), int | float):
            return "a caption without log_prob"
    return None


def check_denoise(body: Any, width: int, height: int) -> str | None:
    if not isinstance(body, dict) or (body.get("width"), body.get("height")) != (width, height):
        return f"not a {width}x{height} image"
    if not isinstance(body.get("tiles"), int) or body["tiles"] < 1:
        return "no tiles"
    return check_png(body.get("image"), width, height, "image")


def check_upscale(body: Any, width: int, height: int) -> str | None:
    """The image sent, ``scale`` times larger (the answer says its scale)."""
    scale = body.get("scale") if isinstance(body, dict) else None
    if not isinstance(scale, int) or scale < 2:
        return "no scale"
    if (body.get("width"), body.get("height")) != (scale * width, scale * height):
        return f"not a {scale * width}x{scale * height} image ({scale}x {width}x{height})"
    if not isinstance(body.get("tiles"), int) or body["tiles"] < 1:
        return "no tiles"
    return check_png(body.get("image"), scale * width, scale * height, "image")


def check_generate(body: Any, label: str, count: int) -> str | None:
    images = _list(body, "images", count, "{} images for a count of {}")
    if isinstance(images, str):
        return images
    if body.get("label") != label:
        return f"images of {body.get('label')!r}, not {label!r}"
    for image in images:
        problem = check_png(image, body.get("width"), body.get("height"), "generated image")
        if problem:
            return problem
    return None


def check_png(image: Any, width: int | None, height: int | None, what: str) -> str | None:
    """A ``{"b64": ...}`` PNG of the given size; only its header is read."""
    if not isinstance(image, dict) or not isinstance(image.get("b64"), str):
        return f"no {what}"
    try:
        with Image.open(io.BytesIO(base64.b64decode(image["b64"], validate=True))) as png:
            if png.format != "PNG":
                return f"{what} is {png.format}, not PNG"
            if png.size != (width, height):
                return f"{what} is {png.size[0]}x{png.size[1]}, not {width}x{height}"
    except (binascii.Error, OSError, ValueError):
        return f"{what} does not decode"
    return None


def _field(body: Any, name: str, kind: type) -> Any:
    """``body[name]`` if it is a ``kind``, else why not (a str)."""
    if not isinstance(body, dict):
        return "not a JSON object"
    value = body.get(name)
    return value if isinstance(value, kind) else f"no {name}"


def _list(body: Any, name: str, expected: int, wrong_length: str) -> Any:
    """``body[name]`` if it is a list of ``expected`` items, else why not (a str;
    ``wrong_length`` formatted with the length found and the one expected)."""
    value = _field(body, name, list)
    if isinstance(value, list) and len(value) != expected:
        return wrong_length.format(len(value), expected)
    return value


def _is_probability(value: Any) -> bool:
    return isinstance(value, int | float) and -1e-6 <= value <= 1 + 1e-6


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
