"""Bad frames and bad model files: typed errors naming what was wrong, never anything else."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.sdk.onnx_models import build_graph, make_meta, save_model
from usseg_sdk import InvalidFrameError, ModelLoadError, Segmenter, SegmenterConfig
from usseg_sdk.config import SegmenterConfigError
from usseg_sdk.errors import BackendUnavailableError
from usseg_sdk.meta import SCHEMA_VERSION

CPU = SegmenterConfig(device="cpu")
TYPED = (InvalidFrameError, ModelLoadError, BackendUnavailableError)


@pytest.fixture(scope="module")
def grey_seg(models):
    return Segmenter(models["grey"], config=CPU)


@pytest.fixture(scope="module")
def rgb_seg(models):
    return Segmenter(models["rgb_stride4"], config=SegmenterConfig(device="cpu", tile_size=(16, 16), overlap=4))


@pytest.mark.parametrize("frame, message", [
    (None, "frame is None"),
    ([[1, 2], [3, 4]], "must be a numpy array"),
    (np.zeros((0, 5), np.uint8), "empty"),
    (np.zeros((5, 0, 3), np.uint8), "empty"),
    (np.zeros(7, np.uint8), "2 dims"),
    (np.zeros((2, 4, 4, 3), np.uint8), "2 dims"),
    (np.zeros((3, 16, 16), np.uint8), r"1, 3 or 4 channels.*transpose"),
    (np.zeros((8, 8, 2), np.uint8), "1, 3 or 4 channels"),
    (np.zeros((8, 8), np.uint16), "uint16.*12-bit"),
    (np.zeros((8, 8), np.int32), "dtype must be uint8"),
    (np.zeros((8, 8), bool), "dtype must be uint8"),
    (np.full((8, 8), np.inf, np.float32), "NaN or infinite"),
    (np.full((8, 8), 3.0), r"\[0, 1\]"),
    (np.zeros((8, 8, 4), np.uint8), "only by RGBI"),
])
def test_bad_frames_raise_invalid_frame_error(grey_seg, frame, message):
    with pytest.raises(InvalidFrameError, match=message):
        grey_seg.predict(frame)
    with pytest.raises(InvalidFrameError):
        grey_seg.predict_batch([np.zeros((8, 8), np.uint8), frame])


dtypes = st.sampled_from([np.uint8, np.uint8, np.uint8, np.uint16, np.int8, np.int64, np.float32, np.float64, bool])
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=hnp.arrays(dtypes, shapes, elements=None))
def test_any_array_predicts_or_raises_a_typed_error(grey_seg, rgb_seg, frame):
    for seg in (grey_seg, rgb_seg):
        try:
            res = seg.predict(frame)
        except TYPED:
            continue
        assert res.labels.shape == frame.shape[:2] and res.labels.dtype == np.uint8
        assert res.labels.max() < seg.meta.n_classes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=20),
                        elements=st.floats(0, 1, width=32)))
def test_unit_float_frames_equal_their_uint8(grey_seg, frame):
    as_uint8 = np.rint(frame * 255).astype(np.uint8)
    np.testing.assert_array_equal(grey_seg.predict(frame).labels, grey_seg.predict(as_uint8).labels)


# -- model files --------------------------------------------------------------------------------------------------
def test_missing_model(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Segmenter(tmp_path / "nope.onnx", config=CPU)


def test_empty_export_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match=r"no model.onnx or model.engine.*notes.txt"):
        Segmenter(tmp_path, config=CPU)


@pytest.mark.parametrize("content", [b"", b"\x00\xff" * 500, b"this is not a protobuf at all" * 10],
                         ids=["empty", "random", "text"])
def test_not_onnx(tmp_path, content):
    (tmp_path / "model.onnx").write_bytes(content)
    with pytest.raises(ModelLoadError, match="cannot load"):
        Segmenter(tmp_path / "model.onnx", config=CPU)


def test_truncated_onnx(models, tmp_path):
    data = models["grey"].read_bytes()
    (tmp_path / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=str(tmp_path / "model.onnx")):
        Segmenter(tmp_path / "model.onnx", config=CPU)


def test_onnx_without_usseg_metadata(tmp_path):
    meta = make_meta()
    path = save_model(build_graph(meta), None, tmp_path / "model.onnx")
    with pytest.raises(ModelLoadError, match="not a model exported by usseg"):
        Segmenter(path, config=CPU)


def test_newer_schema(tmp_path):
    meta = make_meta()
    raw = json.loads(meta.to_json())
    raw["schema_version"] = SCHEMA_VERSION + 1
    path = save_model(build_graph(meta), None, tmp_path / "model.onnx", raw_meta=raw)
    with pytest.raises(ModelLoadError, match="upgrade usseg-sdk"):
        Segmenter(path, config=CPU)


def test_malformed_sidecar(tmp_path):
    path = save_model(build_graph(make_meta()), None, tmp_path / "model.onnx")
    (tmp_path / "model.json").write_text('{"schema_version": 1, "method": "x"}')
    with pytest.raises(ModelLoadError, match=r"model.json is malformed"):
        Segmenter(path, config=CPU)


def test_meta_disagreeing_with_graph(tmp_path):
    graph = build_graph(make_meta(channels=1, color_order="gray"))
    rgb_meta = make_meta(channels=3, color_order="rgb")
    with pytest.raises(ModelLoadError, match="input has 1 channels, metadata says 3"):
        Segmenter(save_model(graph, rgb_meta, tmp_path / "a" / "model.onnx"), config=CPU)
    scored = make_meta(scores=True)
    with pytest.raises(ModelLoadError, match="lack scores='scores'"):
        Segmenter(save_model(graph, scored, tmp_path / "b" / "model.onnx"), config=CPU)


def test_overlap_too_large_for_tile(models):
    with pytest.raises(SegmenterConfigError, match="overlap"):
        Segmenter(models["grey"], config=SegmenterConfig(device="cpu", tile_size=(16, 16), overlap=16))
