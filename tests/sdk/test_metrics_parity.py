"""usseg_sdk.metrics reproduces the official IIC and PiCIE evaluation numbers (tests/data/parity, FIXTURES.md).

Orientation: our matrices are [pred, gt] like IIC's num_correct; PiCIE's histogram is [gt, pred], its transpose.
PiCIE stores its numbers x100 and its per-class lists in *prediction* order (see usseg_sdk.metrics).
"""

from __future__ import annotations

import numpy as np
import pytest

from usseg_sdk.metrics import (
    ConfusionMatrix,
    apply_mapping,
    evaluate_clusters,
    hungarian_match,
    many_to_one_match,
    segmentation_scores,
)

F64 = {"rtol": 1e-10, "atol": 0.0}
F32 = {"rtol": 1e-5, "atol": 0.0}


def _iic_head_matrix(d: dict, head: int) -> ConfusionMatrix:
    """IIC's `_segmentation_get_data`: argmax over head channels, keep mask=1 pixels, count [pred, gt]."""
    preds = d[f"x_outs_head{head}"].argmax(axis=1)  # (B, H, W)
    keep = d["masks"].astype(bool)  # (B, H, W)
    np.testing.assert_array_equal(preds[keep], d[f"flat_preds_head{head}"])
    np.testing.assert_array_equal(d["targets"][keep], d["flat_targets"])
    k = int(d["n_classes"])
    return ConfusionMatrix(k, k).update(preds[keep], d["targets"][keep])


def test_iic_hungarian_eval_and_sub_head_selection(parity):
    d = parity("iic_eval_hungarian")
    accs = []
    for head in (0, 1):
        cm = _iic_head_matrix(d, head)
        np.testing.assert_array_equal(cm.matrix, d[f"expected_num_correct_head{head}"])
        # IIC hands linear_assignment the cost N - num_correct; our maximisation has the same optimum.
        np.testing.assert_array_equal(cm.n_pixels - cm.matrix, d[f"expected_cost_head{head}"])
        mapping = hungarian_match(cm)
        pairs = d[f"expected_match_head{head}"]  # (pred, gt) rows
        np.testing.assert_array_equal(mapping[pairs[:, 0]], pairs[:, 1])
        _, scores = evaluate_clusters(cm, mode="hungarian")
        np.testing.assert_allclose(scores.pixel_accuracy, d[f"expected_acc_head{head}"], **F64)
        accs.append(scores.pixel_accuracy)
    # cluster_subheads_eval: "best" is the sub-head with the highest accuracy on the assignment set.
    # The official train_accs/best/avg went through float32 tensors, hence the float32 tolerance.
    np.testing.assert_allclose(accs, d["expected_train_accs"], **F32)
    np.testing.assert_allclose(max(accs), d["expected_best"], **F32)
    np.testing.assert_allclose(np.mean(accs), d["expected_avg"], **F32)
    assert int(np.argmax(accs)) == int(d["expected_best_train_sub_head"])


def test_iic_original_many_to_one_match(parity):
    d = parity("iic_eval_original_match")
    cm = ConfusionMatrix(int(d["preds_k"]), int(d["targets_k"])).update(d["flat_preds"], d["flat_targets"])
    mapping = many_to_one_match(cm)
    pairs = d["expected_match"]  # (pred, gt) rows sorted by pred
    np.testing.assert_array_equal(mapping[pairs[:, 0]], pairs[:, 1])
    mapping2, scores = evaluate_clusters(cm, mode="many_to_one")
    np.testing.assert_array_equal(mapping2, mapping)
    np.testing.assert_allclose(scores.pixel_accuracy, d["expected_acc"], **F64)


def test_picie_scores_with_ignored_labels_and_absent_class(parity):
    d = parity("picie_metrics")
    n = int(d["n_class"])
    assert {-1, 255} <= set(np.unique(d["label_trues"]).tolist())
    cm = ConfusionMatrix(n, n).update(d["label_preds"], d["label_trues"])  # -1 and 255 skipped
    np.testing.assert_array_equal(cm.matrix.T, d["expected_histogram"])
    scores = segmentation_scores(cm.matrix)
    np.testing.assert_allclose(scores.iou * 100, d["expected_iou"], equal_nan=True, **F64)
    assert np.isnan(scores.iou[5])  # class 5 is absent from gt and prediction ...
    np.testing.assert_allclose(scores.miou * 100, d["expected_mean_iou"], **F64)  # ... and nanmean skips it
    # PiCIE's "precision" is tp / (tp + fn) on [gt, pred]: per-class recall in our naming.
    np.testing.assert_allclose(scores.recall * 100, d["expected_precision_per_class"], equal_nan=True, **F64)
    np.testing.assert_allclose(np.nanmean(scores.recall) * 100, d["expected_mean_precision"], **F64)
    np.testing.assert_allclose(scores.pixel_accuracy * 100, d["expected_pixel_accuracy"], **F64)


def _picie_eval_matrix(d: dict) -> ConfusionMatrix:
    k = int(d["K_test"])
    labels = d["labels"].reshape(len(d["labels"]), -1)  # (B, H*W), like expected_preds
    assert {-1, 255} <= set(np.unique(labels).tolist())
    return ConfusionMatrix(k, k).update(d["expected_preds"], labels)


@pytest.mark.parametrize("name", ["picie_eval_k5", "picie_eval_k27_thing_stuff"])
def test_picie_evaluate(parity, name):
    d = parity(name)
    cm = _picie_eval_matrix(d)
    np.testing.assert_array_equal(cm.matrix.T, d["expected_histogram"])
    mapping, scores = evaluate_clusters(cm, mode="hungarian")
    pairs = d["expected_match"]  # (gt, pred) rows
    np.testing.assert_array_equal(mapping[pairs[:, 1]], pairs[:, 0])
    np.testing.assert_allclose(scores.pixel_accuracy * 100, d["expected_acc"], **F64)
    np.testing.assert_allclose(scores.pixel_accuracy * 100, d["expected_pixel_accuracy"], **F64)
    np.testing.assert_allclose(scores.miou * 100, d["expected_mean_iou"], **F64)
    # PiCIE's per-class lists are in prediction order: entry p belongs to class mapping[p].
    np.testing.assert_allclose(scores.iou[mapping] * 100, d["expected_iou"], **F64)
    np.testing.assert_allclose(scores.recall[mapping] * 100, d["expected_precision_per_class"], **F64)
    np.testing.assert_allclose(np.nanmean(scores.recall) * 100, d["expected_mean_precision"], **F64)


@pytest.mark.parametrize("name", ["picie_eval_k5", "picie_eval_k27_thing_stuff"])
def test_picie_predictions_from_features_and_centroids(parity, name):
    # The test may use torch (the module may not): PiCIE's evaluate() L2-normalises the features over channels,
    # applies a 1x1 conv whose weight is the centroids, upsamples bilinearly (align_corners=False), argmax.
    torch = pytest.importorskip("torch")
    d = parity(name)
    feats = torch.nn.functional.normalize(torch.from_numpy(d["features"]), dim=1, p=2)  # (B, C, h, w)
    weight = torch.from_numpy(d["centroids"])[:, :, None, None]  # (K, C, 1, 1)
    logits = torch.nn.functional.conv2d(feats, weight, torch.from_numpy(d["classifier_bias"]))  # (B, K, h, w)
    logits = torch.nn.functional.interpolate(logits, size=d["labels"].shape[-2:], mode="bilinear", align_corners=False)
    preds = logits.argmax(dim=1).reshape(len(logits), -1).numpy()  # (B, H*W)
    np.testing.assert_array_equal(preds, d["expected_preds"])


def test_picie_k27_logged_thing_stuff_quirk(parity):
    # NOT our API: this reproduces an official bug (docs/METHODS.md §P16) to show we understand the logged
    # "Table 2" numbers. PiCIE builds new_hist[pred_of(gt)] = hist[gt], so new_hist's rows are in *prediction*
    # order, then slices new_hist[:12, :12] ("thing") and new_hist[12:, 12:] ("stuff"). Those slices are not the
    # 12 thing / 15 stuff ground-truth classes. Our per-class scores (indexed by class) are the correct ones.
    d = parity("picie_eval_k27_thing_stuff")
    cm = _picie_eval_matrix(d)
    mapping = hungarian_match(cm)
    hist = cm.matrix.T  # PiCIE's [gt, pred]
    new_hist = hist[mapping]  # row p = hist row of the class matched to cluster p
    np.testing.assert_array_equal(new_hist, np.asarray(d["expected_histogram"])[mapping])
    for part, block in (("thing", new_hist[:12, :12]), ("stuff", new_hist[12:, 12:])):
        scores = segmentation_scores(block.T, background=None)  # our [pred, gt] orientation
        # The logged numbers are printed with 4 decimals.
        np.testing.assert_allclose(scores.pixel_accuracy * 100, d[f"logged_acc_{part}"], rtol=0, atol=5e-5)
        np.testing.assert_allclose(scores.miou * 100, d[f"logged_miou_{part}"], rtol=0, atol=5e-5)
    # The correct thing/stuff split of the same run differs from the logged one.
    _, full = evaluate_clusters(cm)
    assert abs(np.nanmean(full.iou[:12]) * 100 - d["logged_miou_thing"]) > 1.0


def test_picie_mapping_applied_through_class_confusion(parity):
    # PiCIE computes its metrics on new_hist; ours on apply_mapping. The diagonals (matched pixels) agree.
    d = parity("picie_eval_k5")
    cm = _picie_eval_matrix(d)
    mapping = hungarian_match(cm)
    class_confusion = apply_mapping(cm, mapping, 5)  # [pred_class, gt]
    new_hist = cm.matrix.T[mapping]  # rows in prediction order
    np.testing.assert_array_equal(np.diag(class_confusion)[mapping], np.diag(new_hist))
