from __future__ import annotations

import keras
import numpy as np
import pytest

import kerve_manifest
from tests.helpers import build_colour_classifier, colour_manifest
from training import export


def test_publish_numbers_versions_and_records_provenance(tmp_path):
    model = build_colour_classifier()
    first = export.publish(model, colour_manifest(), tmp_path, "colours")
    second = export.publish(model, colour_manifest(), tmp_path, "colours")
    assert (first.name, second.name) == ("1", "2")
    assert not [p for p in (tmp_path / "colours").iterdir() if p.name.startswith(".")]
    manifest = kerve_manifest.read_manifest(second)
    assert manifest.provenance["keras_version"] == keras.__version__
    assert manifest.provenance["created_at"]


def test_published_model_loads_safely_and_predicts_the_same(tmp_path):
    model = build_colour_classifier()
    path = export.publish(model, colour_manifest(), tmp_path, "colours")
    loaded = keras.saving.load_model(path / kerve_manifest.MODEL_FILE, safe_mode=True)
    batch = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(batch), model.predict_on_batch(batch))


def test_existing_version_is_never_overwritten(tmp_path):
    model = build_colour_classifier()
    export.publish(model, colour_manifest(), tmp_path, "colours", version=3)
    with pytest.raises(ValueError, match="already exists"):
        export.publish(model, colour_manifest(), tmp_path, "colours", version=3)


def test_failed_publish_leaves_no_version_behind(tmp_path):
    class Unsaveable(keras.Model):
        def save(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export.publish(Unsaveable(), colour_manifest(), tmp_path, "colours")
    assert list((tmp_path / "colours").iterdir()) == []
