"""The converted EfficientNet-Lite0 against the PyTorch original.

Expected logits were computed once with torch 2.13 and the upstream PyTorch
implementation (PyPI efficientnet_lite_pytorch 0.1.0, EfficientNet.from_name(
"efficientnet-lite0") with this checkpoint loaded, eval mode) on the input below.
"""

from __future__ import annotations

import numpy as np
import pytest

from training import efficientnet_lite, torch_checkpoint

CHECKED_CLASSES = [0, 1, 281, 282, 285, 409, 967, 999]
EXPECTED_LOGITS = np.array(
    [
        [1.42303, 1.2632, 0.40622, -0.07652, 0.24281, 1.15154, -2.41805, -1.42389],
        [1.27475, 1.14428, 0.56799, 0.04884, 0.29349, 0.99074, -2.5611, -1.34566],
    ]
)
EXPECTED_TOP = (418, [7.44641, 7.11236])
TORCH_PARAMETERS = 4_652_008  # sum(p.numel() for p in model.parameters()) in PyTorch


@pytest.fixture(scope="module")
def state():
    return torch_checkpoint.load_state_dict(efficientnet_lite.checkpoint_path())


def reference_input() -> np.ndarray:
    n, h, w, c = np.meshgrid(
        np.arange(2), np.arange(224), np.arange(224), np.arange(3), indexing="ij"
    )
    return np.sin(0.05 * h * (c + 1) + 0.07 * w + n).astype(np.float32)


def test_converted_model_reproduces_pytorch_logits(state):
    model = efficientnet_lite.build(classifier_activation=None)
    efficientnet_lite.assign_torch_weights(model, state)
    logits = model.predict_on_batch(reference_input())
    np.testing.assert_allclose(logits[:, CHECKED_CLASSES], EXPECTED_LOGITS, atol=2e-3)
    top_class, top_logits = EXPECTED_TOP
    assert logits.argmax(axis=1).tolist() == [top_class, top_class]
    np.testing.assert_allclose(logits.max(axis=1), top_logits, atol=2e-3)


def test_architecture_has_exactly_the_checkpoint_parameters():
    model = efficientnet_lite.build()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == TORCH_PARAMETERS


def test_a_missing_or_unused_tensor_fails_the_conversion(state):
    model = efficientnet_lite.build()
    missing = {k: v for k, v in state.items() if k != "_blocks.7._project_conv.weight"}
    with pytest.raises(KeyError, match="_blocks.7._project_conv.weight"):
        efficientnet_lite.assign_torch_weights(model, missing)
    extra = {**state, "_blocks.16._bn9.weight": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="not used"):
        efficientnet_lite.assign_torch_weights(model, extra)


def test_weights_fit_other_input_sizes_without_the_top(tmp_path):
    model = efficientnet_lite.build((96, 96, 3), include_top=False)
    efficientnet_lite.load_imagenet_weights(model, cache_dir=tmp_path)
    assert (tmp_path / efficientnet_lite.CACHE_FILE).exists()
    assert model.output_shape == (None, 3, 3, 1280)
    reference = efficientnet_lite.build()
    efficientnet_lite.load_imagenet_weights(reference, cache_dir=tmp_path)  # from the cache
    np.testing.assert_array_equal(
        model.get_layer("block9_dw_conv").get_weights()[0],
        reference.get_layer("block9_dw_conv").get_weights()[0],
    )
    for name in efficientnet_lite.FEATURE_LAYERS:
        model.get_layer(name)
