"""Training's evaluation scores heads with the one matching rule of ``usseg_sdk.metrics``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.evaluation import score_confusions


def test_fewer_clusters_than_classes_are_scored_one_to_one_as_calibration_and_the_benchmark_do():
    # 2 clusters, 3 classes: many-to-one would give both clusters class 0; one-to-one gives cluster 1 class 2
    matrix = np.array([[50, 1, 10], [40, 0, 30]])
    out = score_confusions({"main": torch.as_tensor(matrix), "over": torch.as_tensor(matrix)}, warn=False)
    assert out["matching"] == "hungarian"
    assert out["iou"][2] == pytest.approx(30 / (30 + 40 + 10))
    assert out["over/miou"] == pytest.approx(out["miou"])


def test_over_clustering_head_is_scored_many_to_one():
    matrix = torch.tensor([[50, 1], [40, 0], [0, 30]])
    out = score_confusions({"main": matrix}, warn=False)
    assert out["matching"] == "many_to_one" and out["iou"][1] == pytest.approx(30 / 31)
