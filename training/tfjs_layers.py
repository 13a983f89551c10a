"""TF.js layers models (model.json + weight shards), read into Keras 3 with numpy.

    model = tfjs_layers.load(Path("package/models/x4/model.json"))

A TF.js *layers* model is what ``tensorflowjs_converter`` makes of a Keras model: a
``model.json`` holding the Keras 2 model config (``modelTopology``) and a
``weightsManifest`` (name, shape, dtype and optional quantization of every weight,
in the order their bytes lie in the shard files). It is read here with numpy and
the json module only, so no tensorflowjs (and its pinned TensorFlow) is needed:

- the Keras 2 config is adapted to what Keras 3 deserialises (``keras_config``:
  class names, InputLayer arguments, shared-object ids, custom JavaScript layers);
- the shards are cut into arrays, dequantized where the converter quantized them;
- the weights are set by name, and every weight must find its variable with the
  same shape, and every variable its weight: nothing is silently left random.

Custom layers that UpscalerJS registers in JavaScript are Keras layers here,
registered under the ``kerve`` package so that a saved model reloads with
``safe_mode=True`` in any process that imports this module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import keras
import numpy as np

# Bytes per element of the dtypes a weights manifest may use (TF.js's DataType, plus the
# dtypes of quantized weights).
DTYPES = {
    "float32": np.float32,
    "int32": np.int32,
    "bool": np.bool_,
    "float16": np.float16,
    "uint8": np.uint8,
    "uint16": np.uint16,
}
# Keras 2 class names that Keras 3 knows by another.
RENAMED_CLASSES = {"Model": "Functional"}
# Layers holding Python code or TensorFlow ops: nothing in a config can rebuild them safely.
UNSUPPORTED_CLASSES = {"Lambda", "TensorFlowOpLayer", "TFOpLambda", "SlicingOpLambda"}


# -- custom JavaScript layers -----------------------------------------------------------
@keras.saving.register_keras_serializable(package="kerve")
class MultiplyBeta(keras.layers.Layer):
    """UpscalerJS's ``MultiplyBeta``: the residual scaling of ESRGAN's dense blocks (x * beta)."""

    def __init__(self, beta: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.beta = float(beta)

    def call(self, inputs):
        return inputs * self.beta

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="kerve")
class PixelShuffle(keras.layers.Layer):
    """UpscalerJS's ``PixelShuffle`` (``tf.depthToSpace``, NHWC): the ``scale**2 * C``
    channels of a pixel become a ``scale x scale`` block of ``C`` channels; channel
    ``(i * scale + j) * C + c`` goes to row ``i``, column ``j`` of the block."""

    def __init__(self, scale: int, **kwargs):
        super().__init__(**kwargs)
        self.scale = int(scale)

    def call(self, inputs):
        s = self.scale
        shape = keras.ops.shape(inputs)
        channels = inputs.shape[-1] // (s * s)
        x = keras.ops.reshape(inputs, (shape[0], shape[1], shape[2], s, s, channels))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return keras.ops.reshape(x, (shape[0], shape[1] * s, shape[2] * s, channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        s = self.scale
        if channels % (s * s):
            raise ValueError(
                f"PixelShuffle x{s} needs channels divisible by {s * s}, not {channels}"
            )
        return (
            batch,
            None if height is None else height * s,
            None if width is None else width * s,
            channels // (s * s),
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}


# JavaScript class name -> Keras layer; newer UpscalerJS names the shuffle by its scale.
CUSTOM_LAYERS: dict[str, type[keras.layers.Layer]] = {
    "MultiplyBeta": MultiplyBeta,
    "PixelShuffle": PixelShuffle,
}
_SCALED_SHUFFLE = re.compile(r"PixelShuffle(\d+)x")


# -- reading ----------------------------------------------------------------------------
def load(model_json: Path, custom_layers: dict[str, type] | None = None) -> keras.Model:
    """The Keras 3 model of a TF.js layers model, weights set (dequantized to float32)."""
    model_json = Path(model_json)
    spec = read_model_json(model_json)
    model = build(spec["modelTopology"], custom_layers)
    assign_weights(model, read_weights(spec, model_json.parent))
    return model


def read_model_json(path: Path) -> dict:
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or "modelTopology" not in spec or "weightsManifest" not in spec:
        raise ValueError(f"{path} is not a TF.js model.json (no modelTopology/weightsManifest)")
    if spec.get("format", "layers-model") != "layers-model":
        raise ValueError(
            f"{path} is a TF.js {spec['format']!r}, not a layers-model: a graph model holds "
            "TensorFlow ops, not a Keras config"
        )
    return spec


def read_weights(spec: dict, folder: Path) -> dict[str, np.ndarray]:
    """Every weight of the manifest by name, as float32 (or its integer/bool dtype)."""
    folder = Path(folder)
    weights: dict[str, np.ndarray] = {}
    for group in spec["weightsManifest"]:
        data = b"".join(_read_shard(folder, name) for name in group["paths"])
        offset = 0
        for entry in group["weights"]:
            array, size = _decode(entry, data, offset)
            weights[entry["name"]] = array
            offset += size
        if offset != len(data):
            raise ValueError(
                f"the shards {group['paths']} hold {len(data)} bytes but their manifest "
                f"describes {offset}: the files do not belong to this model.json"
            )
    return weights


def _read_shard(folder: Path, name: str) -> bytes:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ValueError(f"weight shard {name!r} lies outside {folder}")
    if not path.is_file():
        raise FileNotFoundError(f"weight shard {name!r} is missing from {folder}")
    return path.read_bytes()


def _decode(entry: dict, data: bytes, offset: int) -> tuple[np.ndarray, int]:
    """(array, bytes it took) of one manifest entry whose bytes start at ``offset``."""
    name, shape = entry["name"], tuple(entry["shape"])
    quantization = entry.get("quantization")
    stored = quantization["dtype"] if quantization else entry["dtype"]
    if stored not in DTYPES or entry["dtype"] not in DTYPES:
        raise ValueError(f"weight {name!r}: unsupported dtype {stored!r}")
    count = int(np.prod(shape, dtype=np.int64))
    size = count * np.dtype(DTYPES[stored]).itemsize
    if offset + size > len(data):
        raise ValueError(
            f"weight {name!r} {list(shape)} needs bytes {offset}..{offset + size} but the "
            f"shards hold {len(data)}"
        )
    values = np.frombuffer(data, DTYPES[stored], count, offset).reshape(shape)
    if quantization and stored in ("uint8", "uint16"):
        # Affine quantization: value = q * scale + min (tfjs-core io/io_utils.ts).
        values = values.astype(np.float32) * quantization["scale"] + quantization["min"]
    return values.astype(DTYPES[entry["dtype"]]), size


# -- the model --------------------------------------------------------------------------
def build(topology: dict, custom_layers: dict[str, type] | None = None) -> keras.Model:
    """A Keras 3 model (random weights) from a Keras 2 ``modelTopology`` or ``model_config``."""
    config = topology.get("model_config", topology)
    custom = {**CUSTOM_LAYERS, **(custom_layers or {})}
    config = keras_config(config, custom)
    objects = dict(custom)  # the JavaScript class names, as the config spells them
    with keras.saving.custom_object_scope(objects):
        if config["class_name"] == "Sequential":
            return keras.Sequential.from_config(config["config"], custom_objects=objects)
        if config["class_name"] == "Functional":
            return keras.Model.from_config(config["config"], custom_objects=objects)
    raise ValueError(f"a {config['class_name']!r} model is neither Functional nor Sequential")


def keras_config(config: Any, custom: dict[str, type] | None = None) -> Any:
    """A Keras 2 model config as Keras 3 deserialises it (a new object; the input is kept)."""
    custom = custom if custom is not None else CUSTOM_LAYERS
    if isinstance(config, list):
        return [keras_config(item, custom) for item in config]
    if not isinstance(config, dict):
        return config
    config = {k: keras_config(v, custom) for k, v in config.items() if k != "shared_object_id"}
    class_name = config.get("class_name")
    if not isinstance(class_name, str) or not isinstance(config.get("config"), dict):
        return config
    if class_name in UNSUPPORTED_CLASSES:
        raise ValueError(
            f"layer {config['config'].get('name')!r} is a {class_name}: it holds code, not "
            "a config, and cannot be rebuilt"
        )
    layer = dict(config["config"])
    if match := _SCALED_SHUFFLE.fullmatch(class_name):
        class_name = "PixelShuffle"
        layer.setdefault("scale", int(match.group(1)))
    config["class_name"] = RENAMED_CLASSES.get(class_name, class_name)
    if class_name == "InputLayer":
        if "batch_input_shape" in layer:
            layer["batch_shape"] = layer.pop("batch_input_shape")
        if layer.pop("ragged", False):
            raise ValueError(f"input {layer.get('name')!r} is ragged; Keras 3 has no ragged inputs")
    if class_name == "Sequential":
        layer = _sequential_input_first(layer)
    config["config"] = layer
    return config


def _sequential_input_first(config: dict) -> dict:
    """Keras 2 kept a Sequential's input shape on its first layer; Keras 3 wants an InputLayer."""
    layers = list(config["layers"])
    first = layers[0]["config"] if layers else {}
    if layers and layers[0]["class_name"] != "InputLayer" and "batch_input_shape" in first:
        first = dict(first)
        shape = first.pop("batch_input_shape")
        layers[0] = {**layers[0], "config": first}
        input_config = {"batch_shape": shape, "dtype": first.get("dtype", "float32")}
        layers.insert(0, {"class_name": "InputLayer", "config": input_config})
    return {**config, "layers": layers}


# Keras 2 weight names that Keras 3 gives another name.
RENAMED_WEIGHTS = {"depthwise_kernel": "kernel"}


def assign_weights(model: keras.Model, weights: dict[str, np.ndarray]) -> None:
    """Set every variable of ``model`` from ``weights`` (``layer/variable`` names, as
    Keras 2 wrote them); a weight or variable left over, or a shape mismatch, is an error."""
    # A Sequential's variables are "<model>/<layer>/<name>"; Keras 2 wrote "<layer>/<name>".
    variables = {
        variable.path.removeprefix(f"{model.name}/"): variable for variable in model.weights
    }
    pending = dict(variables)
    values = []
    for name, array in weights.items():
        key = name.removesuffix(":0")
        if key not in variables:
            layer, _, short = key.rpartition("/")
            key = f"{layer}/{RENAMED_WEIGHTS.get(short, short)}"
        if key not in variables:
            raise ValueError(f"weight {name!r} has no variable in the model")
        variable = pending.pop(key, None)
        if variable is None:
            raise ValueError(f"weight {name!r} is given twice")
        if tuple(variable.shape) != array.shape:
            raise ValueError(
                f"weight {name!r} has shape {list(array.shape)}, the model's variable "
                f"{list(variable.shape)}"
            )
        values.append((variable, array))
    if pending:
        raise ValueError(f"no weight for {len(pending)} model variables: {sorted(pending)[:5]}")
    for variable, array in values:
        variable.assign(array.astype(variable.dtype))
