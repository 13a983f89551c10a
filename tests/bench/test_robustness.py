"""`python -m bench.robustness`'s parts on a tiny model: the open-loop overload counts every
request it sends, probes /healthz alongside, and reads the server's own histogram."""

from __future__ import annotations

import numpy as np

from bench import robustness
from service.settings import BatchingOverride
from tests.helpers import encode, live_server, make_settings, publish_colour_classifier


def test_open_loop_overload_counts_every_request_and_probes_health(tmp_path):
    root = tmp_path / "models"
    publish_colour_classifier(root)
    # A queue of 2: at 200 requests/s some are refused, and the counts must still add up.
    settings = make_settings(root, batching=BatchingOverride(max_delay_ms=2, max_queue=2))
    body = encode(np.full((16, 16, 3), 200, np.uint8), "JPEG")
    with live_server(settings) as url:
        found = robustness.overload(f"{url}/v1/models/colours/classify", [body], 200, 2.0)
    statuses = found["statuses"]
    assert found["sent"] == 400 == sum(statuses.values())
    assert set(statuses) <= {"200", "503"} and statuses.get("200", 0) > 0
    assert found["healthz_probes"] >= 10 and found["healthz_p99_ms"] is not None
    if "503" in statuses:
        assert found["refused_server_p99_ms_at_most"] is not None


def test_histogram_percentiles_are_read_between_two_scrapes():
    before = {0.005: 1.0, 0.05: 1.0, float("inf"): 1.0}
    after = {0.005: 51.0, 0.05: 100.0, float("inf"): 101.0}  # 50 fast, 49 under 50 ms, 1 slow
    assert robustness.bucket_percentile_ms(before, after, 50) == 5.0
    assert robustness.bucket_percentile_ms(before, after, 99) == 50.0
    assert robustness.bucket_percentile_ms(before, after, 100) == float("inf")
    assert robustness.bucket_percentile_ms(after, after, 99) is None
