"""benchmarks/failure_frames.py on tiny synthetic frames: per-frame numbers by hand, the summaries, the maps."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import failure_frames as ff
from benchmarks.accuracy import scoring
from benchmarks.accuracy.rows import ROW_STEPS
from benchmarks.accuracy.settings import Settings
from benchmarks.datasets import CRACKFOREST
from training.errors import ConfigError
from usseg_sdk.metrics import apply_mapping

CLASSES = ("background", "crack")


def test_frame_scores_by_hand():
    truth = np.zeros((4, 5), np.uint8)
    truth[1, 0:4] = 1  # 4 crack pixels
    pred = np.zeros((4, 5), np.uint8)
    pred[1, 1:4] = 1  # 3 of them found
    pred[3, 0:2] = 1  # 2 false alarms
    s = ff.frame_scores(pred, truth, 2)
    assert s["defect_iou"] == pytest.approx(3 / 6)  # tp 3, union 4 + 5 - 3
    assert (s["truth_defect_px"], s["pred_defect_px"]) == (4, 5)
    assert s["false_alarm_share"] == pytest.approx(2 / 20)
    assert s["confusion"] == [[14, 1], [2, 3]]  # [pred, truth]
    nothing = ff.frame_scores(np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), 2)
    assert nothing["defect_iou"] is None and nothing["false_alarm_share"] == 0.0
    only_pred = ff.frame_scores(pred, np.zeros((4, 5), np.uint8), 2)
    assert only_pred["defect_iou"] == 0.0 and only_pred["false_alarm_share"] == pytest.approx(5 / 20)


def test_frame_scores_average_the_defect_classes_present_and_skip_unlabelled_pixels():
    truth = np.array([[0, 1, 1, 255], [0, 0, 0, 0]], np.uint8)
    pred = np.array([[0, 1, 2, 2], [0, 0, 0, 0]], np.uint8)
    s = ff.frame_scores(pred, truth, 4)
    # class 1: tp 1, union 2 -> 0.5; class 2: tp 0, union 1 -> 0; class 3 absent: left out
    assert s["defect_iou"] == pytest.approx(0.25)
    assert (s["truth_defect_px"], s["pred_defect_px"]) == (2, 2)  # the 255 pixel counts nowhere
    assert s["false_alarm_share"] == 0.0  # class 2 on a crack pixel is a wrong class, not a false alarm


def frame(iou, truth_px=10, false_alarm=0.0):
    return {"defect_iou": iou, "truth_defect_px": truth_px, "pred_defect_px": 5, "false_alarm_share": false_alarm,
            "confusion": [[0, 0], [0, 0]]}


def test_row_summary_counts_missed_false_alarms_and_sorts_the_worst():
    frames = {"a": frame(0.5), "b": frame(0.05, false_alarm=0.02), "c": frame(0.0), "d": frame(None, truth_px=0),
              "e": frame(0.0, truth_px=0, false_alarm=0.5), "f": frame(0.09999), "g": frame(0.1), "h": frame(0.7),
              "i": frame(0.0, truth_px=30), "j": frame(0.0)}
    s = ff.row_summary(frames)
    assert s["frames"] == 10 and s["frames_with_defects"] == 8
    assert s["missed"] == 5  # b, c, f, i, j (0.1 itself is not missed)
    assert s["false_alarm_frames"] == 2  # b and e (e has no defect in the truth)
    assert s["median_false_alarm_share"] == 0.0 and s["frames_without_predicted_defects"] == 0
    assert s["median_defect_iou"] == pytest.approx((0.05 + 0.09999) / 2)  # of 0, 0, 0, 0.05, 0.09999, 0.1, ...
    # ties: the larger truth first (i), then by id; e has no truth defects
    assert [w["id"] for w in s["worst"]] == ["i", "c", "j", "b", "f"]
    assert s["worst"][3]["defect_iou"] == 0.05


def test_frames_every_row_misses():
    per_row = {"r1": {"x": frame(0.0), "y": frame(0.05), "z": frame(0.3), "w": frame(None, truth_px=0)},
               "r2": {"x": frame(0.09), "y": frame(0.2), "z": frame(0.0), "w": frame(None, truth_px=0)},
               "r3": {"x": frame(0.01), "y": frame(0.0), "z": frame(0.0), "w": frame(None, truth_px=0)}}
    assert ff.missed_by_every_row(per_row) == ["x"]
    per_row["r2"]["y"] = frame(0.0)
    assert ff.missed_by_every_row(per_row) == ["x", "y"]
    assert ff.missed_by_every_row({}) == []


def test_shown_frames_dedupe_and_name_every_owner():
    results = {"r1": {"summary": {"worst": [{"id": "x"}, {"id": "y"}, {"id": "q"}]}},
               "r2": {"summary": {"worst": [{"id": "y"}, {"id": "z"}]}}}
    assert ff.shown_frames(results) == [("x", ["r1"]), ("y", ["r1", "r2"]), ("z", ["r2"])]


class ClusterIdsMethod:
    """A stand-in method whose head's argmax is the image's first channel (cluster ids stored as floats)."""

    def __init__(self, ks):
        self.ks = ks

    def input_spec(self):
        return SimpleNamespace(stride=1)

    def inference_net(self, head):
        k = self.ks[head]
        return lambda images: F.one_hot(images[:, 0].long(), k).permute(0, 3, 1, 2).float()  # (B, K, H, W)


def over_head_scores():
    """Heads as the benchmark scores them: over head k=3; on calibration cluster 1 is crack, 0 and 2 background."""
    calib = {"main": np.array([[50, 1], [2, 9]]), "over": np.array([[40, 0], [1, 9], [10, 0]])}
    return scoring.score_heads(calib, calib, CLASSES)


def test_score_frames_use_the_run_mapping_and_pool_to_the_benchmark_confusion():
    heads = over_head_scores()
    assert heads["over"]["calibration_miou_fit"]["mapping"] == [0, 1, 0]
    clusters = [np.array([[0, 1, 1, 2], [0, 0, 2, 2]]), np.array([[2, 2, 2, 2], [1, 0, 0, 0]])]
    truths = [np.array([[0, 1, 0, 0], [0, 0, 0, 1]]), np.array([[0, 0, 0, 0], [0, 0, 0, 0]])]
    pairs = list(zip(clusters, truths, strict=True))
    batches = [(f"f{i}", {"image": torch.tensor(c, dtype=torch.float32)[None, None], "label": torch.tensor(t)[None]})
               for i, (c, t) in enumerate(pairs)]
    method = ClusterIdsMethod({"main": 2, "over": 3})
    scores, maps = ff.score_frames(method, heads, batches, 2)
    assert maps["f0"].tolist() == [[0, 1, 1, 0], [0, 0, 0, 0]]
    assert scores["f0"]["defect_iou"] == pytest.approx(1 / 3)  # tp (0, 1); union also (0, 2) and (1, 3)
    assert scores["f0"]["false_alarm_share"] == pytest.approx(1 / 8)
    assert scores["f1"]["defect_iou"] == 0.0 and scores["f1"]["truth_defect_px"] == 0
    cluster_confusion = np.zeros((3, 2), np.int64)
    for c, t in pairs:
        np.add.at(cluster_confusion, (c.ravel(), t.ravel()), 1)
    pooled = ff.pooled_scores(scores)
    assert pooled["confusion"] == apply_mapping(cluster_confusion, [0, 1, 0]).tolist()
    assert pooled["defect_iou"] == pytest.approx(1 / 4)  # tp 1, predicted 3 (f0: 2, f1: 1), truth 2
    wrong = copy.deepcopy(heads)
    wrong["over"]["calibration_miou_fit"]["mapping"] = [0, 0, 1]  # cluster 2 named crack
    wrong_scores, _ = ff.score_frames(method, wrong, batches, 2)
    assert wrong_scores["f0"]["defect_iou"] == pytest.approx(1 / 4)  # tp (1, 3); union 3 of cluster 2 + (0, 1)
    assert wrong_scores["f1"]["false_alarm_share"] == pytest.approx(4 / 8)


def test_row_settings_rebuild_the_run_settings():
    settings = Settings(eval_limit=None, data_root="/nowhere", dataset="crackforest",
                        budget_steps=tuple(sorted({**ROW_STEPS, "iic": 77}.items())),
                        split_file=str(CRACKFOREST.split_file), tuning_subset=None)
    for row in ("iic", "kmeans"):
        record = {"row": row, "settings": settings.key(row), "threads": 1}
        rebuilt = ff.row_settings(record, CRACKFOREST, settings.data_root, "cpu")
        assert rebuilt.key(row) == settings.key(row) and rebuilt.steps(row) == settings.steps(row)
    record = {"row": "kmeans", "settings": {**settings.key("kmeans"), "split_file": "neu_seg.json"}}
    with pytest.raises(ConfigError, match="split file"):
        ff.row_settings(record, CRACKFOREST, settings.data_root, "cpu")


def test_report_only_writes_the_table_and_the_notes(tmp_path):
    frames = {"001": frame(0.0, truth_px=40), "002": frame(0.4, false_alarm=0.03)}
    frames["001"]["pred_defect_px"] = 0
    row = {"summary": ff.row_summary(frames), "frames": frames, "seconds": {"total": 12.3},
           "pooled": {"defect_iou": 0.2, "json_defect_iou": 0.2, "confusion_equals_json": True}}
    report = {"title": "CrackForest", "seed": 1, "command": "python -m benchmarks.failure_frames ...", "frames": 2,
              "missed_by_every_row": ["001"], "notes": "", "rows": {"kmeans": row}}
    (tmp_path / "failure_frames_crackforest.json").write_text(json.dumps(report))
    argv = ["--dataset", "crackforest", "--out", str(tmp_path), "--report-only", "--notes", "Cracks missed."]
    assert ff.main(argv) == 0
    md = (tmp_path / "failure_frames_crackforest.md").read_text()
    assert "| kmeans | 2 | 2 | 0.200 | 1 | 1 | 1.50% | 1 | 0.200 | 0.200 | yes | 12 |" in md
    assert "- kmeans: 001: 0.000, 002: 0.400" in md and "Frames every row misses (1): 001." in md
    assert md.rstrip().endswith("Cracks missed.")
    assert json.loads((tmp_path / "failure_frames_crackforest.json").read_text())["notes"] == "Cracks missed."
