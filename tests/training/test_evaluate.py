from __future__ import annotations

import numpy as np

from training import evaluate


def test_classification_report_numbers():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 1, 0])
    report = evaluate.classification_report(labels, predictions, ["a", "b", "c"])
    assert report["accuracy"] == round(4 / 6, 4)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    a = report["per_class"]["a"]
    assert (a["precision"], a["recall"], a["support"]) == (round(2 / 3, 4), round(2 / 3, 4), 3)
    assert report["per_class"]["c"]["f1"] == 0.0
    b_f1 = 2 * (2 / 3) * 1 / (2 / 3 + 1)
    assert report["macro_f1"] == round((2 / 3 + b_f1 + 0) / 3, 4)
