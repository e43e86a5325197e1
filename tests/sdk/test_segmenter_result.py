"""Segmentation outputs: defects(), to_rle(), overlay(), class areas."""

from __future__ import annotations

import numpy as np
import pytest

from usseg_sdk import Segmentation, Segmenter, SegmenterConfig
from usseg_sdk.meta import ClassInfo, InputSpec, ModelMeta
from usseg_sdk.rle import decode, rows_to_label_map


def meta3() -> ModelMeta:
    classes = [ClassInfo(name="background", color=(10, 20, 30), defect=False),
               ClassInfo(name="scratch", color=(255, 0, 0)), ClassInfo(name="pit", color=(0, 0, 255))]
    return ModelMeta(method="test", n_clusters=3, classes=classes, cluster_to_class=[0, 1, 2],
                     input=InputSpec(channels=1, color_order="gray", mean=(0.5,), std=(0.25,)))


def labelled() -> Segmentation:
    labels = np.zeros((10, 12), np.uint8)
    labels[1:3, 1:4] = 1  # scratch, area 6
    labels[6:9, 8:12] = 1  # scratch, area 12
    labels[5, 2] = 2  # pit, area 1
    scores = np.zeros((3, 10, 12), np.float32)
    scores[1, 1:3, 1:4] = 0.5
    scores[1, 6:9, 8:12] = 0.9
    scores[2, 5, 2] = 0.7
    frame = np.full((10, 12), 100, np.uint8)
    return Segmentation(labels=labels, meta=meta3(), scores=scores, frame=frame)


def test_defects_components_bbox_centroid_score():
    found = labelled().defects()
    assert [(d.class_name, d.area, d.bbox) for d in found] == [
        ("scratch", 12, (8, 6, 4, 3)), ("scratch", 6, (1, 1, 3, 2)), ("pit", 1, (2, 5, 1, 1))]
    assert found[0].centroid == pytest.approx((9.5, 7.0))
    assert [d.mean_score for d in found] == pytest.approx([0.9, 0.5, 0.7])
    assert found[0].to_dict()["class_id"] == 1


def test_defects_filters_and_no_scores():
    seg = labelled()
    assert [d.area for d in seg.defects(min_area=6)] == [12, 6]
    assert [d.class_name for d in seg.defects(classes=["pit"])] == ["pit"]
    assert [d.area for d in seg.defects(classes=[0])] == [120 - 19]  # background when asked for
    no_scores = Segmentation(labels=seg.labels, meta=seg.meta)
    assert all(d.mean_score is None for d in no_scores.defects())
    diagonal = np.zeros((4, 4), np.uint8)
    diagonal[[0, 1], [0, 1]] = 1
    assert len(Segmentation(labels=diagonal, meta=meta3()).defects(connectivity=4)) == 2
    assert len(Segmentation(labels=diagonal, meta=meta3()).defects(connectivity=8)) == 1
    with pytest.raises(KeyError, match="unknown class 'rust'"):
        seg.defects(classes=["rust"])


def test_to_rle_severstal_rows_round_trip():
    seg = labelled()
    rows = seg.to_rle("0002cc93b.jpg")
    assert [(r[0], r[1]) for r in rows] == [("0002cc93b.jpg", 1), ("0002cc93b.jpg", 2)]
    np.testing.assert_array_equal(rows_to_label_map(rows, seg.shape), seg.labels)
    assert decode(rows[1][2], seg.shape).sum() == 1
    assert rows[1][2] == f"{2 * 10 + 5 + 1} 1"  # column-major, 1-indexed: column 2, row 5


def test_overlay_colours_defects_in_bgr():
    seg = labelled()
    img = seg.overlay(alpha=1.0, contours=False)
    assert img.shape == (10, 12, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[2, 2], [0, 0, 255])  # scratch is RGB red -> BGR (0, 0, 255)
    np.testing.assert_array_equal(img[5, 2], [255, 0, 0])  # pit is RGB blue
    np.testing.assert_array_equal(img[0, 0], [100, 100, 100])  # background left as the grey frame
    half = seg.overlay(alpha=0.5, contours=False)
    np.testing.assert_allclose(half[2, 2], [50, 50, 178], atol=1)
    with_contours = seg.overlay(alpha=0.0, contours=True, legend=True)
    assert (with_contours != 100).any()
    colour_map = Segmentation(labels=seg.labels, meta=seg.meta).overlay()  # no frame: the colour map
    np.testing.assert_array_equal(colour_map[0, 0], [30, 20, 10])
    assert seg.class_areas() == {"background": 101, "scratch": 18, "pit": 1}


def test_result_of_a_real_prediction(models):
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu"))
    frame = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    res = seg.predict(frame)
    defects = res.defects()
    assert sum(d.area for d in defects) == int((res.labels > 0).sum())
    for d in defects:
        x, y, w, h = d.bbox
        assert (res.labels[y:y + h, x:x + w] == d.class_id).any()
        assert 0.0 < d.mean_score <= 1.0
    np.testing.assert_array_equal(rows_to_label_map(res.to_rle("f"), res.shape), res.labels)
    assert res.overlay().shape == (30, 40, 3)
