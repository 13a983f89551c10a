from __future__ import annotations

import pytest

from training import backbones


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_backbones_build_offline_and_expose_features_at_every_stride(name):
    model = backbones.build_backbone(name, 64, weights="none")
    layers = backbones.feature_layers(model)
    assert len(layers) == len(backbones.FEATURE_STRIDES)
    sizes = [model.get_layer(layer).output.shape[1] for layer in layers]
    assert sizes == [64 // stride for stride in backbones.FEATURE_STRIDES]
    spec = backbones.BACKBONES[name]
    assert len(spec.mean) in (1, 3) and all(s > 0 for s in spec.std)


def test_unknown_backbone_and_missing_weights_file():
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.build_backbone("vgg99", 64)
    with pytest.raises(ValueError, match="existing file"):
        backbones.build_backbone("mobilenet_v2", 64, weights="/nowhere/weights.h5")


def test_a_published_model_on_the_same_backbone_seeds_its_weights(tmp_path):
    import keras
    import numpy as np

    keras.utils.set_random_seed(1)
    trained = backbones.build_backbone("efficientnet_lite0", 32, weights="none")
    inputs = keras.Input((32, 32, 3))
    head = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(trained(inputs)))
    keras.Model(inputs, head).save(tmp_path / "model.keras")
    copied = backbones.build_backbone("efficientnet_lite0", 32, weights=str(tmp_path))
    fresh = backbones.build_backbone("efficientnet_lite0", 32, weights="none")
    for mine, theirs in zip(copied.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert any(  # a fresh one starts elsewhere: the copy is not by chance
        not np.array_equal(a, b)
        for a, b in zip(fresh.get_weights(), trained.get_weights(), strict=True)
    )
    with pytest.raises(ValueError, match="same backbone"):
        backbones.build_backbone("mobilenet_v2", 32, weights=str(tmp_path / "model.keras"))
