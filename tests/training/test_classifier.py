"""The classifier script end to end on a 200-image subset, then served by the app."""

from __future__ import annotations

import json

import kerve_manifest
from tests.helpers import encode, make_settings, start_client, wait_ready
from training import classifier
from training.data import fashion_mnist


def test_script_trains_publishes_and_the_service_serves_it(tmp_path):
    path = classifier.main(
        [
            "--data",
            "fashion_mnist",
            "--weights",
            "none",
            "--image-size",
            "32",
            "--train-size",
            "200",
            "--val-size",
            "100",
            "--test-size",
            "100",
            "--head-epochs",
            "0",
            "--epochs",
            "1",
            "--verbose",
            "0",
            "--out",
            str(tmp_path / "models" / "fashion"),
        ]
    )
    assert path == tmp_path / "models" / "fashion" / "1"
    for artifact in ("learning_curves.png", "confusion.png", "history.csv"):
        assert (path / artifact).stat().st_size > 0
    manifest = kerve_manifest.read_manifest(path)
    assert manifest.labels == fashion_mnist.LABELS
    assert 0.0 <= manifest.metrics["test_accuracy"] <= 1.0
    assert manifest.provenance["split_sizes"] == {"train": 200, "val": 100, "test": 100}
    assert manifest.provenance["weights"] == "none"
    assert sum(map(sum, manifest.metrics["confusion_matrix"])) == 100

    images, labels = fashion_mnist.load("test")
    with start_client(make_settings(tmp_path / "models")) as client:
        wait_ready(client)
        response = client.post(
            "/v1/models/fashion/classify?top_k=10",
            content=encode(images[0], "PNG"),
            headers={"Content-Type": "image/png"},
        )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"][0]
    assert sorted(p["label"] for p in predictions) == sorted(fashion_mnist.LABELS)
    assert json.dumps(predictions)  # plain JSON all the way down
