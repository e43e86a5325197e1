"""usseg_sdk.metrics: confusion streaming, matching, scores by hand, input checks and properties."""

from __future__ import annotations

import dataclasses
import doctest
import itertools
import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from usseg_sdk import metrics
from usseg_sdk.metrics import (
    ConfusionMatrix,
    SegmentationScores,
    apply_mapping,
    evaluate_clusters,
    hungarian_match,
    many_to_one_match,
    segmentation_scores,
)

# ---------------------------------------------------------------------------------------------- ConfusionMatrix


def test_confusion_counts_by_hand_and_skips_unlabelled():
    gt = np.array([[0, 1, 2], [255, -1, 2], [7, 1, 0]])  # 255 ignored, -1 and 7 outside [0, 3)
    pred = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=np.uint8)
    cm = ConfusionMatrix(n_pred=2, n_gt=3).update(pred, gt)
    assert cm.matrix.dtype == np.int64
    # counted pairs (pred, gt): (1,0) (1,1) (0,2) (0,2) (0,1) (1,0)
    np.testing.assert_array_equal(cm.matrix, [[0, 1, 2], [2, 1, 0]])
    assert cm.n_pixels == 6


def test_ignore_index_inside_the_class_range_is_skipped():
    gt = np.array([0, 1, 2, 2])
    cm = ConfusionMatrix(3, 3, ignore_index=2).update(np.array([0, 1, 0, 0]), gt)
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    cm_all = ConfusionMatrix(3, 3, ignore_index=None).update(np.array([0, 1, 0, 0]), gt)
    assert cm_all.n_pixels == 4


def test_update_accepts_any_shape_and_integer_dtypes():
    pred = np.array([True, False, True])
    cm = ConfusionMatrix(2, 2).update(pred, np.array([1, 0, 0], dtype=np.uint16))
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [1, 1]])
    cm.update(np.zeros((2, 3, 4), np.int32), np.zeros((2, 3, 4), np.int64))
    assert cm.matrix[0, 0] == 25
    cm.update(np.zeros((0, 5), np.uint8), np.zeros((0, 5), np.uint8))
    assert cm.n_pixels == 27
    cm.update(np.array([1], np.int64), np.array([1], np.uint64))  # mixed signedness must not go through float
    assert cm.matrix[1, 1] == 2


@pytest.mark.parametrize(
    ("pred", "gt", "message"),
    [
        (np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8), r"same shape, got pred \(2, 3\) and gt \(3, 2\)"),
        (np.zeros(4, np.float32), np.zeros(4, np.uint8), "pred must be an integer array .* float32"),
        (np.zeros(4, np.uint8), np.zeros(4, np.float64), "gt must be an integer array .* float64"),
        (np.array([0, 3]), np.array([0, 0]), r"pred holds ids in \[0, 3\], outside \[0, 3\)"),
        (np.array([-1, 0]), np.array([0, 0]), r"outside \[0, 3\)"),
    ],
)
def test_update_rejects_bad_input(pred, gt, message):
    cm = ConfusionMatrix(3, 2)
    with pytest.raises(ValueError, match=message):
        cm.update(pred, gt)
    assert cm.n_pixels == 0  # nothing half-counted


def test_constructor_and_merge_checks():
    with pytest.raises(ValueError, match="n_pred must be a positive integer"):
        ConfusionMatrix(0, 3)
    with pytest.raises(ValueError, match="n_gt must be a positive integer"):
        ConfusionMatrix(3, 2.0)
    with pytest.raises(ValueError, match="cannot merge"):
        ConfusionMatrix(3, 3).merge(ConfusionMatrix(3, 4))
    with pytest.raises(ValueError, match="cannot merge"):
        ConfusionMatrix(3, 3).merge(ConfusionMatrix(3, 3, ignore_index=0))
    with pytest.raises(TypeError, match="ConfusionMatrix"):
        ConfusionMatrix(3, 3).merge(np.zeros((3, 3)))


def test_matrix_is_read_only_merge_and_reset():
    a = ConfusionMatrix(2, 2).update(np.array([0, 1]), np.array([0, 0]))
    b = ConfusionMatrix(2, 2).update(np.array([1, 1]), np.array([1, 1]))
    with pytest.raises(ValueError):
        a.matrix[0, 0] = 5
    np.testing.assert_array_equal(a.merge(b).matrix, [[1, 0], [1, 2]])
    np.testing.assert_array_equal(b.matrix, [[0, 0], [0, 2]])  # the other one is untouched
    a.reset()
    assert a.n_pixels == 0


def test_update_is_fast_on_severstal_frames():
    # Catches a per-pixel Python loop, not a benchmark: a vectorised update takes milliseconds per frame.
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, (256, 1600), dtype=np.uint8)
    gt = rng.integers(0, 5, (256, 1600), dtype=np.uint8)
    gt[:, :100] = 255
    cm = ConfusionMatrix(5, 5)
    start = time.perf_counter()
    for _ in range(10):
        cm.update(pred, gt)
    assert time.perf_counter() - start < 5.0
    assert cm.n_pixels == 10 * 256 * 1500


# ---------------------------------------------------------------------------------------------- matching


def test_hungarian_by_hand():
    m = np.array([[0, 10, 1], [9, 0, 0], [4, 0, 5]])
    np.testing.assert_array_equal(hungarian_match(m), [1, 0, 2])
    # Greedy (cluster 0 takes its best class 0, cluster 1 gets what is left) matches 6; the optimum matches 10.
    m = np.array([[6, 5], [5, 0]])
    np.testing.assert_array_equal(hungarian_match(m), [1, 0])  # 5 + 5 = 10 > 6 + 0


def test_hungarian_fewer_clusters_than_classes_and_more_raises():
    mapping = hungarian_match(np.array([[1, 7, 0], [0, 6, 5]]))
    np.testing.assert_array_equal(mapping, [1, 2])
    with pytest.raises(ValueError, match="n_pred <= n_gt, got 3 clusters for 2 classes; use many_to_one_match"):
        hungarian_match(np.ones((3, 2)))


def test_many_to_one_by_hand_ties_and_empty_cluster():
    m = np.array([[1, 7, 0], [3, 3, 0], [0, 0, 0], [0, 2, 5]])
    np.testing.assert_array_equal(many_to_one_match(m), [1, 0, 0, 2])  # tie -> lowest, empty -> class 0


def test_apply_mapping_by_hand_and_checks():
    m = np.array([[1, 7, 0], [3, 3, 0], [0, 0, 4], [0, 2, 5]])
    np.testing.assert_array_equal(apply_mapping(m, [1, 0, 2, 2], 3), [[3, 3, 0], [1, 7, 0], [0, 2, 9]])
    np.testing.assert_array_equal(apply_mapping(m, np.array([1, 0, 2, 2]), 4)[3], [0, 0, 0])
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        apply_mapping(m, [0, 1, 2], 3)
    with pytest.raises(ValueError, match=r"values must lie in \[0, 3\)"):
        apply_mapping(m, [0, 1, 2, 3], 3)
    with pytest.raises(ValueError, match="integer array"):
        apply_mapping(m, [0.0, 1.0, 2.0, 2.0], 3)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros(3), "2-D"),
        (np.zeros((0, 3)), "non-empty"),
        (np.array([[1, -1], [0, 1]]), "negative"),
        (np.array([[1.0, np.nan], [0, 1]]), "NaN"),
        (np.array([["a", "b"]]), "integer or float counts"),
    ],
)
def test_matrix_checks(bad, message):
    with pytest.raises(ValueError, match=message):
        hungarian_match(bad)


def _split(rng, n, perm, noise):
    """Labels in [0, len(perm)) and clusters = perm[label], with a fraction `noise` of random clusters."""
    gt = rng.integers(0, len(perm), n)
    clusters = perm[gt]
    flip = rng.random(n) < noise
    clusters[flip] = rng.integers(0, len(perm), flip.sum())
    return clusters, gt


@pytest.mark.parametrize("mode", ["hungarian", "many_to_one"])
def test_mapping_fitted_on_one_split_scores_another(mode):
    rng = np.random.default_rng(1)
    perm = np.array([3, 0, 4, 1, 2])  # class c -> cluster perm[c]
    fit_clusters, fit_gt = _split(rng, 2000, perm, noise=0.2)
    test_clusters, test_gt = _split(rng, 3000, perm, noise=0.4)
    fit = ConfusionMatrix(5, 5).update(fit_clusters, fit_gt)
    test = ConfusionMatrix(5, 5).update(test_clusters, test_gt)
    mapping = hungarian_match(fit) if mode == "hungarian" else many_to_one_match(fit)
    np.testing.assert_array_equal(mapping[perm], np.arange(5))  # the clusters got their classes back
    class_confusion = apply_mapping(test, mapping, 5)
    # Mapping the test pixels first and counting them gives the same class confusion.
    direct = ConfusionMatrix(5, 5).update(mapping[test_clusters], test_gt)
    np.testing.assert_array_equal(class_confusion, direct.matrix)
    scores = segmentation_scores(class_confusion)
    np.testing.assert_allclose(scores.pixel_accuracy, np.mean(mapping[test_clusters] == test_gt), rtol=1e-12)
    # Fitting on the test split itself (IIC's protocol) can only match as many pixels or more.
    _, same = evaluate_clusters(test, mode=mode)
    assert same.pixel_accuracy >= scores.pixel_accuracy


# ---------------------------------------------------------------------------------------------- scores


def test_scores_by_hand():
    # [pred, gt] for background, scratch, pit:
    confusion = np.array(
        [
            [50, 2, 1],  # predicted background
            [4, 6, 0],  # predicted scratch
            [0, 0, 0],  # pit never predicted
        ]
    )
    s = segmentation_scores(confusion, class_names=["bg", "scratch", "pit"])
    assert s.pixel_accuracy == pytest.approx(56 / 63)
    np.testing.assert_allclose(s.iou, [50 / 57, 6 / 12, 0.0])
    np.testing.assert_allclose(s.precision, [50 / 53, 6 / 10, np.nan])
    np.testing.assert_allclose(s.recall, [50 / 54, 6 / 8, 0.0])
    np.testing.assert_allclose(s.f1, [100 / 107, 12 / 18, 0.0])
    assert s.miou == pytest.approx((50 / 57 + 0.5 + 0) / 3)
    assert s.defect_iou == pytest.approx(0.25)
    assert s.defect_f1 == pytest.approx(1 / 3)
    assert s.class_names == ("bg", "scratch", "pit")


def test_absent_class_is_nan_and_skipped():
    confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2 in neither gt nor prediction
    s = segmentation_scores(confusion)
    assert np.isnan(s.iou[2]) and np.isnan(s.f1[2]) and np.isnan(s.precision[2]) and np.isnan(s.recall[2])
    assert s.miou == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert s.class_names == ("class_0", "class_1", "class_2")


def test_background_choice_and_empty_confusion():
    confusion = np.array([[9, 0], [1, 0]])
    assert segmentation_scores(confusion).defect_iou == 0.0  # class 1 predicted once, never right
    assert segmentation_scores(confusion, background=1).defect_iou == pytest.approx(0.9)
    assert segmentation_scores(confusion, background=None).defect_iou == pytest.approx(0.45)
    empty = segmentation_scores(np.zeros((2, 2), np.int64))
    assert np.isnan(empty.pixel_accuracy) and np.isnan(empty.miou) and np.isnan(empty.defect_f1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_confusion": np.ones((2, 3))}, "square"),
        ({"class_confusion": np.ones((2, 2)), "class_names": ["a"]}, "2 distinct non-empty strings"),
        ({"class_confusion": np.ones((2, 2)), "class_names": ["a", "a"]}, "distinct"),
        ({"class_confusion": np.ones((2, 2)), "background": 2}, "background must be a class id"),
    ],
)
def test_scores_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        segmentation_scores(**kwargs)


def test_scores_are_frozen_and_read_only():
    s = segmentation_scores(np.array([[3, 1], [0, 2]]))
    assert isinstance(s, SegmentationScores)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.miou = 1.0
    for array in (s.iou, s.precision, s.recall, s.f1, s.confusion):
        with pytest.raises(ValueError):
            array[0] = 0


def test_to_dict_is_strict_json():
    confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    d = segmentation_scores(confusion, class_names=["ok", "scratch", "pit"]).to_dict()
    text = json.dumps(d, allow_nan=False)  # NaN must have become None
    back = json.loads(text)
    assert back["per_class"]["pit"] == {
        "iou": None, "precision": None, "recall": None, "f1": None, "gt_pixels": 0, "pred_pixels": 0,
    }
    assert back["per_class"]["ok"]["iou"] == pytest.approx(5 / 8)
    assert back["per_class"]["scratch"]["gt_pixels"] == 4
    assert back["confusion"] == confusion.tolist()
    assert back["background"] == "ok" and back["class_names"] == ["ok", "scratch", "pit"]
    assert back["defect_iou"] == pytest.approx(0.5)
    assert segmentation_scores(confusion, background=None).to_dict()["background"] is None


def test_evaluate_clusters_mode_check():
    with pytest.raises(ValueError, match="mapping mode must be 'auto' or one of hungarian, many_to_one, miou"):
        evaluate_clusters(np.eye(2, dtype=int), mode="greedy")


def test_float_matrices_are_accepted():
    # IIC's num_correct is float; the same numbers give the same mapping and scores.
    m = np.array([[1, 9], [8, 2]])
    mapping_i, scores_i = evaluate_clusters(m)
    mapping_f, scores_f = evaluate_clusters(m.astype(np.float64))
    np.testing.assert_array_equal(mapping_i, mapping_f)
    assert scores_i.pixel_accuracy == scores_f.pixel_accuracy


# ---------------------------------------------------------------------------------------------- properties

small_matrices = arrays(
    np.int64, st.tuples(st.integers(1, 5), st.integers(1, 5)).filter(lambda s: s[0] <= s[1]),
    elements=st.integers(0, 30),
)


@settings(max_examples=60, deadline=None)
@given(small_matrices)
def test_hungarian_is_optimal_against_brute_force(matrix):
    n_pred, n_gt = matrix.shape
    mapping = hungarian_match(matrix)
    assert len(set(mapping.tolist())) == n_pred  # one-to-one
    best = max(matrix[np.arange(n_pred), list(cols)].sum() for cols in itertools.permutations(range(n_gt), n_pred))
    assert matrix[np.arange(n_pred), mapping].sum() == best


square_matrices = st.integers(1, 5).flatmap(lambda n: arrays(np.int64, (n, n), elements=st.integers(0, 30))).filter(
    lambda m: m.sum() > 0  # an empty matrix has NaN accuracy
)


@settings(max_examples=60, deadline=None)
@given(square_matrices, st.data())
def test_permuting_cluster_ids_does_not_change_scores(matrix, data):
    perm = np.array(data.draw(st.permutations(range(len(matrix)))))  # new id of cluster p is perm[p]
    permuted = np.empty_like(matrix)
    permuted[perm] = matrix
    mapping, scores = evaluate_clusters(matrix)
    mapping_p, scores_p = evaluate_clusters(permuted)
    assert scores_p.pixel_accuracy == scores.pixel_accuracy  # the optimum is unique in value
    if (mapping_p[perm] == mapping).all():  # same assignment chosen (always, unless the optimum is tied)
        np.testing.assert_array_equal(scores_p.iou, scores.iou)
        np.testing.assert_array_equal(scores_p.confusion, scores.confusion)
    # Many-to-one decides per cluster, so it is exactly equivariant.
    np.testing.assert_array_equal(many_to_one_match(permuted)[perm], many_to_one_match(matrix))


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.int64, st.integers(0, 200), elements=st.sampled_from([-1, 0, 1, 2, 3, 255])),
    st.lists(st.integers(0, 200), max_size=4),
    st.integers(0, 2**32 - 1),
)
def test_streaming_in_chunks_equals_one_update(gt, cuts, seed):
    pred = np.random.default_rng(seed).integers(0, 3, gt.shape)
    whole = ConfusionMatrix(3, 4).update(pred, gt)
    chunked, merged = ConfusionMatrix(3, 4), ConfusionMatrix(3, 4)
    bounds = [0, *sorted(c for c in cuts if c <= gt.size), gt.size]
    for lo, hi in itertools.pairwise(bounds):
        chunked.update(pred[lo:hi], gt[lo:hi])
        merged.merge(ConfusionMatrix(3, 4).update(pred[lo:hi], gt[lo:hi]))
    np.testing.assert_array_equal(chunked.matrix, whole.matrix)
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
    assert whole.n_pixels == np.isin(gt, [0, 1, 2, 3]).sum()


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 4)),
    st.permutations(list(range(5))),
)
def test_perfect_prediction_scores_one(gt, perm):
    clusters = np.array(perm)[gt]  # a relabelling of the truth
    cm = ConfusionMatrix(5, 5).update(clusters, gt)
    for mode in ("hungarian", "many_to_one"):
        mapping, scores = evaluate_clusters(cm, mode=mode)
        np.testing.assert_array_equal(mapping[clusters], gt)
        assert scores.pixel_accuracy == 1.0 and scores.miou == 1.0
        present = np.unique(gt)
        np.testing.assert_array_equal(scores.iou[present], 1.0)
        assert np.isnan(np.delete(scores.iou, present)).all()


def test_module_examples_run():
    result = doctest.testmod(metrics)
    assert result.attempted >= 10 and result.failed == 0


# -- one matching rule for training, benchmarks and calibration ----------------------------------------------------
@pytest.mark.parametrize("k, n, mode", [(4, 4, "hungarian"), (3, 4, "hungarian"), (1, 2, "hungarian"),
                                        (5, 4, "many_to_one"), (20, 4, "many_to_one")])
def test_matching_mode_is_hungarian_exactly_when_every_cluster_can_have_its_own_class(k, n, mode):
    assert metrics.matching_mode(k, n) == mode
    matrix = np.arange(1, k * n + 1).reshape(k, n)
    assert metrics.fit_mapping(matrix)[1] == mode


def test_fewer_clusters_than_classes_are_matched_one_to_one():
    # 2 clusters, 3 classes: many-to-one would give both clusters class 0; one-to-one gives cluster 1 class 2
    matrix = np.array([[50, 1, 10], [40, 0, 30]])
    assert metrics.fit_mapping(matrix)[0].tolist() == [0, 2]


def test_miou_fitted_match_names_a_mixed_cluster_after_the_defect_it_holds():
    # cluster 1 holds 90 of the 100 scratch pixels but also 120 background pixels: the majority vote calls it
    # background (scratch IoU 0); naming it scratches raises the calibration mIoU
    calib = np.array([[5000, 0, 0, 10],
                      [120, 0, 0, 90],
                      [10, 40, 0, 0],
                      [0, 0, 60, 0]])
    assert many_to_one_match(calib).tolist() == [0, 0, 1, 2]
    fitted, mode = metrics.fit_mapping(calib, "miou")
    assert (fitted.tolist(), mode) == ([0, 3, 1, 2], "miou")

    def miou(mapping):
        return segmentation_scores(apply_mapping(calib, mapping)).miou

    assert miou(fitted) > miou(many_to_one_match(calib)) + 0.05
    assert metrics.miou_fitted_match(np.diag([50, 5, 5, 5])).tolist() == [0, 1, 2, 3]  # already optimal: kept
    _, scores = evaluate_clusters(calib, mode="miou")
    assert scores.miou == pytest.approx(miou(fitted))


def test_fit_mapping_rejects_an_unknown_mode_and_hungarian_with_too_many_clusters():
    with pytest.raises(ValueError, match="mapping mode"):
        metrics.fit_mapping(np.eye(2), "majority")
    with pytest.raises(ValueError, match="many_to_one"):
        metrics.fit_mapping(np.ones((3, 2)), "hungarian")


def test_binary_defect_iou_by_hand():
    """Defect classes merged against background: [pred, gt] with background 0 and defects 1, 2."""
    confusion = np.array([[8, 1, 0],
                          [0, 1, 1],
                          [1, 0, 2]])
    s = segmentation_scores(confusion)
    # predicted defect (rows 1-2) 5 px, true defect (columns 1-2) 5 px, both 1 + 1 + 0 + 2 = 4 px: 4 / (5 + 5 - 4)
    assert s.binary_defect_iou == pytest.approx(4 / 6)
    assert s.defect_iou == pytest.approx((1 / 3 + 2 / 4) / 2)  # mean over the defect classes: a confused defect
    assert s.to_dict()["binary_defect_iou"] == pytest.approx(4 / 6)  # class still counts as found
    assert np.isnan(segmentation_scores(confusion, background=None).binary_defect_iou)
    assert segmentation_scores(np.array([[5, 0], [0, 0]])).to_dict()["binary_defect_iou"] is None  # no defect
