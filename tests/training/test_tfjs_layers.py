"""The TF.js layers-model reader: a Keras model written by hand as model.json + shards
(the Keras 2 config tensorflowjs_converter writes), read back into Keras 3."""

from __future__ import annotations

import copy
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from training import tfjs_layers


def reference_model() -> keras.Model:
    """The network the hand-written model.json below describes, built in Keras 3."""
    image = keras.Input((None, None, 3), name="LR")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(image)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = tfjs_layers.MultiplyBeta(0.2, name="beta")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.Concatenate(name="concat")([x, image])
    x = keras.layers.Conv2D(12, 1, name="pre_shuffle")(x)
    output = tfjs_layers.PixelShuffle(2, name="shuffle")(x)
    return keras.Model(image, output, name="tiny")


def keras2_layer(class_name: str, name: str, inbound: list[str], **config) -> dict:
    nodes = [[[source, 0, 0, {}] for source in inbound]] if inbound else []
    layer = {"name": name, "trainable": True, "dtype": "float32", **config}
    return {"class_name": class_name, "config": layer, "name": name, "inbound_nodes": nodes}


CONV = {
    "strides": [1, 1], "padding": "same", "data_format": "channels_last",
    "dilation_rate": [1, 1], "groups": 1, "activation": "linear", "use_bias": True,
    "kernel_initializer": {"class_name": "RandomUniform",
                           "config": {"minval": -0.05, "maxval": 0.05, "seed": None},
                           "shared_object_id": 1},
    "bias_initializer": {"class_name": "Zeros", "config": {}},
    "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
    "kernel_constraint": None, "bias_constraint": None,
}  # fmt: skip


def keras2_topology() -> dict:
    """What tensorflowjs_converter writes for reference_model() saved by Keras 2.10."""
    layers = [
        {"class_name": "InputLayer", "name": "LR", "inbound_nodes": [],
         "config": {"batch_input_shape": [None, None, None, 3], "dtype": "float32",
                    "sparse": False, "ragged": False, "name": "LR"}},
        keras2_layer("Conv2D", "conv", ["LR"], filters=8, kernel_size=[3, 3], **CONV),
        keras2_layer("BatchNormalization", "bn", ["conv"], axis=[3], momentum=0.99,
                     epsilon=0.001, center=True, scale=True),
        keras2_layer("Activation", "relu", ["bn"], activation="relu"),
        keras2_layer("DepthwiseConv2D", "dw", ["relu"], kernel_size=[3, 3], depth_multiplier=1,
                     **{k: v for k, v in CONV.items() if k not in ("groups", "kernel_initializer",
                                                               "kernel_regularizer",
                                                               "kernel_constraint")}),
        keras2_layer("MultiplyBeta", "beta", ["dw"], beta=0.2),
        keras2_layer("Add", "add", ["relu", "beta"]),
        keras2_layer("Concatenate", "concat", ["add", "LR"], axis=-1),
        keras2_layer("Conv2D", "pre_shuffle", ["concat"], filters=12, kernel_size=[1, 1], **CONV),
        # Newer UpscalerJS registers the shuffle by its scale, with no scale in the config.
        keras2_layer("PixelShuffle2x", "shuffle", ["pre_shuffle"]),
    ]  # fmt: skip
    config = {"name": "tiny", "layers": layers, "input_layers": [["LR", 0, 0]],
              "output_layers": [["shuffle", 0, 0]]}  # fmt: skip
    return {"keras_version": "2.10.0", "backend": "tensorflow",
            "model_config": {"class_name": "Model", "config": config}}  # fmt: skip


# Keras 3 variable path -> the name Keras 2 gave it.
KERAS2_NAMES = {"dw/kernel": "dw/depthwise_kernel"}
QUANTIZED = "pre_shuffle/kernel"  # written as uint8, as the converter's --quantize_uint8


def write_tfjs(model: keras.Model, folder, shards: int = 2) -> dict:
    """model.json + shard files for ``model``; the quantized weight is set in ``model`` to
    its dequantized values, so that a faithful reader reproduces ``model`` exactly."""
    entries, chunks = [], []
    for variable in reversed(model.weights):  # any order: the manifest says which is which
        value = np.asarray(variable.numpy(), np.float32)
        entry = {"name": KERAS2_NAMES.get(variable.path, variable.path),
                 "shape": list(value.shape), "dtype": "float32"}  # fmt: skip
        if variable.path == QUANTIZED:
            low, scale = float(value.min()), float(np.ptp(value)) / 255
            quantized = np.round((value - low) / scale).astype(np.uint8)
            entry["quantization"] = {"dtype": "uint8", "min": low, "scale": scale,
                                     "original_dtype": "float32"}  # fmt: skip
            variable.assign(quantized.astype(np.float32) * scale + low)
            chunks.append(quantized.tobytes())
        else:
            chunks.append(value.tobytes())
        entries.append(entry)
    data = b"".join(chunks)
    cut = np.linspace(0, len(data), shards + 1).astype(int)
    paths = [f"group1-shard{i + 1}of{shards}.bin" for i in range(shards)]
    for path, start, end in zip(paths, cut[:-1], cut[1:], strict=True):
        (folder / path).write_bytes(data[start:end])
    spec = {
        "format": "layers-model",
        "generatedBy": "keras v2.10.0",
        "convertedBy": "TensorFlow.js Converter v1.2.6",
        "modelTopology": keras2_topology(),
        "weightsManifest": [{"paths": paths, "weights": entries}],
    }
    (folder / "model.json").write_text(json.dumps(spec))
    return spec


@pytest.fixture
def written(tmp_path):
    keras.utils.set_random_seed(3)
    model = reference_model()
    bn = model.get_layer("bn")  # moving statistics that are not the defaults
    bn.set_weights([w + np.random.default_rng(i).random(w.shape) for i, w in
                    enumerate(bn.get_weights())])  # fmt: skip
    spec = write_tfjs(model, tmp_path)
    return model, spec, tmp_path


def images() -> np.ndarray:
    return np.random.default_rng(5).random((2, 9, 13, 3), np.float32)


def test_a_written_model_reads_back_with_identical_outputs(written, tmp_path):
    reference, _, folder = written
    converted = tfjs_layers.load(folder / "model.json")
    assert [layer.name for layer in converted.layers] == [layer.name for layer in reference.layers]
    assert isinstance(converted.get_layer("shuffle"), tfjs_layers.PixelShuffle)
    assert converted.get_layer("shuffle").scale == 2
    expected = reference.predict_on_batch(images())
    assert expected.shape == (2, 18, 26, 3)
    np.testing.assert_allclose(converted.predict_on_batch(images()), expected, rtol=0, atol=1e-6)
    # The custom layers are registered Keras layers: the model saves and reloads safely.
    converted.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict_on_batch(images()), expected, atol=1e-6)


def test_quantized_weights_are_dequantized(written):
    _, spec, folder = written
    weights = tfjs_layers.read_weights(spec, folder)
    assert weights[QUANTIZED].dtype == np.float32
    entry = next(e for e in spec["weightsManifest"][0]["weights"] if e["name"] == QUANTIZED)
    q = entry["quantization"]
    steps = (weights[QUANTIZED] - q["min"]) / q["scale"]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert len(np.unique(np.round(steps))) > 10


def test_pixel_shuffle_is_depth_to_space():
    values = np.random.default_rng(0).random((2, 3, 5, 27), np.float32)
    expected = tf.nn.depth_to_space(values, 3).numpy()
    np.testing.assert_array_equal(tfjs_layers.PixelShuffle(3)(values), expected)
    assert tfjs_layers.PixelShuffle(3).compute_output_shape((None, None, 5, 27)) == (
        None, None, 15, 3)  # fmt: skip


def test_a_missing_shard_is_refused(written):
    _, _, folder = written
    (folder / "group1-shard2of2.bin").unlink()
    with pytest.raises(FileNotFoundError, match="group1-shard2of2.bin.*missing"):
        tfjs_layers.load(folder / "model.json")


def test_shards_of_the_wrong_size_are_refused(written):
    _, _, folder = written
    shard = folder / "group1-shard2of2.bin"
    shard.write_bytes(shard.read_bytes() + b"\0" * 8)
    with pytest.raises(ValueError, match="bytes but their manifest describes"):
        tfjs_layers.load(folder / "model.json")
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(ValueError, match="needs bytes"):
        tfjs_layers.load(folder / "model.json")


def test_a_shape_mismatch_is_refused(written):
    _, spec, folder = written
    spec = copy.deepcopy(spec)
    layers = spec["modelTopology"]["model_config"]["config"]["layers"]
    next(layer for layer in layers if layer["name"] == "conv")["config"]["kernel_size"] = [1, 1]
    (folder / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"weight 'conv/kernel' has shape \[3, 3, 3, 8\]"):
        tfjs_layers.load(folder / "model.json")


def test_weights_and_variables_must_pair_up(written):
    _, spec, folder = written
    spec = copy.deepcopy(spec)
    entries = spec["weightsManifest"][0]["weights"]
    entries[0]["name"] = "elsewhere/kernel"
    (folder / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="'elsewhere/kernel' has no variable"):
        tfjs_layers.load(folder / "model.json")


def test_code_layers_and_graph_models_are_refused(written):
    _, spec, folder = written
    spec = copy.deepcopy(spec)
    spec["modelTopology"]["model_config"]["config"]["layers"][3]["class_name"] = "Lambda"
    (folder / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="Lambda: it holds code"):
        tfjs_layers.load(folder / "model.json")
    (folder / "model.json").write_text(json.dumps({**spec, "format": "graph-model"}))
    with pytest.raises(ValueError, match="not a layers-model"):
        tfjs_layers.load(folder / "model.json")


def test_a_keras2_sequential_gets_an_input_layer():
    dense = {"name": "dense", "units": 2, "activation": "linear", "use_bias": True,
             "batch_input_shape": [None, 4], "dtype": "float32", "trainable": True}  # fmt: skip
    topology = {
        "class_name": "Sequential",
        "config": {"name": "seq", "layers": [{"class_name": "Dense", "config": dense}]},
    }
    model = tfjs_layers.build(topology)
    tfjs_layers.assign_weights(
        model,
        {"dense/kernel": np.eye(4, 2, dtype=np.float32), "dense/bias": np.ones(2, np.float32)},
    )
    np.testing.assert_allclose(model.predict_on_batch(np.ones((1, 4), np.float32)), [[2.0, 2.0]])
