"""The pixel AUROC and AP of benchmarks/anomaly_quality.py against scikit-learn's (ties included)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.anomaly_quality import average_precision, pixel_auroc

metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a dev extra")


@pytest.mark.parametrize("levels", [None, 7])  # continuous scores, and scores with many ties
def test_auroc_and_ap_match_scikit_learn(levels):
    rng = np.random.default_rng(0)
    positive = rng.random(2000) < 0.1
    scores = rng.normal(size=2000) + positive * 1.0
    if levels:
        scores = np.round(scores * levels / 4) / levels
    assert pixel_auroc(scores, positive) == pytest.approx(metrics.roc_auc_score(positive, scores), abs=1e-12)
    assert average_precision(scores, positive) == pytest.approx(
        metrics.average_precision_score(positive, scores), abs=1e-12)


def test_a_perfect_score_and_a_missing_class():
    positive = np.array([False, False, True, True])
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    assert pixel_auroc(scores, positive) == 1.0 and average_precision(scores, positive) == 1.0
    assert np.isnan(pixel_auroc(scores, np.zeros(4, bool))) and np.isnan(average_precision(scores, np.zeros(4, bool)))
