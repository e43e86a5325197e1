"""Ignored border and region of interest (issue 13.4, runtime part): predictions there become the background class,
so a net's false defect ring along the frame edge (zero padding) reports no defect. meta.ignore_border is the
model's default, SegmenterConfig / USSEG_IGNORE_BORDER / --ignore-border override it."""

from __future__ import annotations

import numpy as np
import pytest

from usseg_sdk import Segmenter, SegmenterConfig, SegmenterConfigError
from usseg_sdk.cli import build_parser
from usseg_sdk.config import config_from_args

# The tiny grey conv net (tests/sdk/onnx_models.py, seed 0) gives a uniform frame of 100 one cluster inside (3) and
# others along the edge (its 'same' convs pad with zeros); this mapping makes the inside background.
MAPPING = [1, 2, 2, 0]
UNIFORM = np.full((20, 30), 100, np.uint8)


@pytest.fixture(scope="module")
def ring_models(tmp_path_factory):
    onnx_models = pytest.importorskip("tests.sdk.onnx_models", reason="needs the onnx package")
    root = tmp_path_factory.mktemp("ring")
    plain = onnx_models.build_model(root / "plain" / "model.onnx", n_clusters=4, cluster_to_class=MAPPING)[0]
    border = onnx_models.build_model(root / "border" / "model.onnx", n_clusters=4, cluster_to_class=MAPPING,
                                     ignore_border=2)[0]
    return plain, border


def test_uniform_frame_has_a_border_ring_without_ignore_border(ring_models):
    res = Segmenter(ring_models[0], config=SegmenterConfig(device="cpu")).predict(UNIFORM)
    assert (res.labels[2:-2, 2:-2] == 0).all()  # the inside is background
    defects = res.defects()
    assert defects and all(d.bbox[0] < 2 or d.bbox[1] < 2 or d.bbox[0] + d.bbox[2] > 28 or d.bbox[1] + d.bbox[3] > 18
                           for d in defects)  # the false defects are on the edge only


def test_ignore_border_removes_the_ring_and_keeps_real_defects(ring_models):
    seg = Segmenter(ring_models[0], config=SegmenterConfig(device="cpu", ignore_border=2))
    assert seg.predict(UNIFORM).defects() == []
    frame = UNIFORM.copy()
    frame[8:12, 12:18] = 250  # a real defect inside
    plain = Segmenter(ring_models[0], config=SegmenterConfig(device="cpu")).predict(frame)
    res = seg.predict(frame)
    np.testing.assert_array_equal(res.labels[2:-2, 2:-2], plain.labels[2:-2, 2:-2])
    assert res.defects() and all(d.bbox[0] >= 2 and d.bbox[1] >= 2 for d in res.defects())
    assert (res.labels[:2] == 0).all() and (res.labels[:, -2:] == 0).all()
    np.testing.assert_array_equal(res.clusters, plain.clusters)  # raw clusters are left as the net gave them


def test_meta_default_and_config_override(ring_models):
    by_meta = Segmenter(ring_models[1], config=SegmenterConfig(device="cpu"))
    assert by_meta.meta.ignore_border == 2 and by_meta.predict(UNIFORM).defects() == []
    overridden = Segmenter(ring_models[1], config=SegmenterConfig(device="cpu", ignore_border=0))
    assert overridden.predict(UNIFORM).defects()
    assert SegmenterConfig.from_env({"USSEG_IGNORE_BORDER": "3", "USSEG_ROI": "1,2,10,8"}).roi == (1, 2, 10, 8)
    args = build_parser().parse_args(["predict", "s", "-m", "m", "-o", "o", "--ignore-border", "0", "--roi",
                                      "0,0,5,5"])
    assert config_from_args(args, environ={}).ignore_border == 0


def test_roi_keeps_only_its_region(ring_models):
    frame = UNIFORM.copy()
    frame[8:12, 4:8] = 250
    frame[8:12, 20:24] = 250
    seg = Segmenter(ring_models[0], config=SegmenterConfig(device="cpu", roi=(12, 3, 15, 14)))
    res = seg.predict(frame)
    assert res.defects() and all(d.bbox[0] >= 12 and d.bbox[0] + d.bbox[2] <= 27 for d in res.defects())
    assert (res.labels[:, :12] == 0).all() and (res.labels[:3] == 0).all() and (res.labels[17:] == 0).all()
    with pytest.raises(SegmenterConfigError, match="roi"):
        SegmenterConfig.create(roi=(0, 0, 0, 5))
