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
