"""Models still to come (models/<name>/PENDING, written by the demo zoo): listed with
`pending` and no versions, never loaded, and not waited for by readiness."""

from __future__ import annotations

import json

from tests.helpers import (
    make_settings,
    publish_colour_classifier,
    start_client,
    wait_ready,
    wait_until,
)

NOTE = {"reason": "demo zoo: training, started 12:00:00", "expected_s": 330}


def test_a_pending_model_is_listed_and_readiness_ignores_it(repository):
    (repository / "segmenter").mkdir()
    (repository / "segmenter" / "PENDING").write_text(json.dumps(NOTE))
    with start_client(make_settings(repository)) as client:
        wait_ready(client)  # ready: the colour classifier serves, the segmenter is pending
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["segmenter"] == {
            "name": "segmenter",
            "versions": [],
            "pending": NOTE,
        }
        assert "pending" not in models["colours"]
        assert models["colours"]["versions"][0]["state"] == "AVAILABLE"
        assert client.get("/v1/models/segmenter").json()["pending"] == NOTE
        assert client.get("/v1/models/nothing").status_code == 404

        # published, the model is served; once the zoo removes its PENDING, it is plain
        publish_colour_classifier(repository, name="segmenter")
        (repository / "segmenter" / "PENDING").unlink()

        def served():
            info = client.get("/v1/models/segmenter").json()  # 404 until the next scan
            return [v["state"] for v in info.get("versions", [])] == ["AVAILABLE"] and info

        info = wait_until(served)
        assert "pending" not in info
        assert client.get("/readyz").status_code == 200
