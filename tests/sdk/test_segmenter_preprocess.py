"""Preprocessing from ModelMeta: colour order, grey<->RGB, RGBI, padding to the stride and cropping back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from usseg_sdk import InvalidFrameError, Segmenter, SegmenterConfig
from usseg_sdk.meta import InputSpec
from usseg_sdk.preprocess import (
    channel_order,
    fill_padded,
    model_planes,
    padded_size,
    reflect_index,
    to_model_dtype,
    validate_frame,
)

CPU = SegmenterConfig(device="cpu")
R, G, B = 0, 1, 2  # cluster ids of the channel_argmax models: which input channel was brightest


def colour_frame() -> np.ndarray:
    """A BGR frame (as cv2 gives): left third red, middle green, right blue."""
    frame = np.zeros((6, 9, 3), np.uint8)
    frame[:, 0:3, 2] = 255  # red in BGR order is channel 2
    frame[:, 3:6, 1] = 255
    frame[:, 6:9, 0] = 255
    return frame


def test_bgr_frame_reaches_rgb_model_as_rgb(models):
    labels = Segmenter(models["rgb_argmax"], config=CPU).predict(colour_frame()).labels
    np.testing.assert_array_equal(labels[0], [R] * 3 + [G] * 3 + [B] * 3)


def test_rgb_frame_order_setting(models):
    rgb_frame = colour_frame()[:, :, ::-1]
    seg = Segmenter(models["rgb_argmax"], config=SegmenterConfig(device="cpu", frame_order="rgb"))
    np.testing.assert_array_equal(seg.predict(rgb_frame).labels[0], [R] * 3 + [G] * 3 + [B] * 3)


def test_bgr_model_gets_bgr(models):
    # channel_argmax on a BGR model: cluster 0 = channel 0 = blue
    labels = Segmenter(models["bgr_argmax"], config=CPU).predict(colour_frame()).labels
    np.testing.assert_array_equal(labels[0], [2] * 3 + [1] * 3 + [0] * 3)


def test_grey_frame_for_rgb_model_equals_grey_as_bgr(models):
    seg = Segmenter(models["rgb_stride4"], config=CPU)
    grey = np.random.default_rng(0).integers(0, 256, (21, 30), dtype=np.uint8)
    np.testing.assert_array_equal(seg.predict(grey).labels, seg.predict(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)).labels)
    np.testing.assert_array_equal(seg.predict(grey[:, :, None]).labels, seg.predict(grey).labels)


def test_colour_frame_for_grey_model_uses_bt601_grey(models):
    seg = Segmenter(models["grey"], config=CPU)
    bgr = np.random.default_rng(1).integers(0, 256, (18, 26, 3), dtype=np.uint8)
    expected = seg.predict(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)).labels
    np.testing.assert_array_equal(seg.predict(bgr).labels, expected)


def test_rgbi_model_takes_four_channels_only(models):
    seg = Segmenter(models["rgbi_argmax"], config=CPU)
    frame = np.zeros((4, 8, 4), np.uint8)
    frame[:, :2, 2] = 255  # R (BGR+I order)
    frame[:, 2:4, 1] = 255  # G
    frame[:, 4:6, 0] = 255  # B
    frame[:, 6:, 3] = 255  # infrared
    np.testing.assert_array_equal(seg.predict(frame).labels[0], [0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(InvalidFrameError, match="RGBI"):
        seg.predict(frame[:, :, :3])


def test_four_channel_frame_refused_by_rgb_model(models):
    with pytest.raises(InvalidFrameError, match=r"only by RGBI models.*frame\[\.\.\., :3\]"):
        Segmenter(models["rgb_argmax"], config=CPU).predict(np.zeros((8, 8, 4), np.uint8))


@pytest.mark.parametrize("h, w", [(1, 1), (1, 7), (5, 3), (9, 13), (16, 16), (2, 40)])
def test_fill_padded_is_cv2_reflect_101(h, w):
    spec = InputSpec(channels=1, color_order="gray", mean=(0.5,), std=(0.25,), stride=8, min_size=4)
    hp, wp = padded_size(h, w, spec)
    assert hp % 8 == 0 and wp % 8 == 0 and hp >= max(h, 4) and wp >= max(w, 4) and hp - max(h, 4) < 8
    plane = np.random.default_rng(h * 100 + w).integers(0, 256, (h, w), dtype=np.uint8)
    dst = np.full((1, hp, wp), 7, np.uint8)
    fill_padded(dst, [plane])
    if h > 1 and w > 1 and hp - h < h and wp - w < w:
        expected = cv2.copyMakeBorder(plane, 0, hp - h, 0, wp - w, cv2.BORDER_REFLECT_101)
    else:  # repeated reflection (pad longer than the frame): numpy's reflect is the same rule
        expected = np.pad(plane, ((0, hp - h), (0, wp - w)), mode="reflect") if min(h, w) > 1 else None
    if expected is not None:
        np.testing.assert_array_equal(dst[0], expected)
    np.testing.assert_array_equal(dst[0, :h, :w], plane)
    assert reflect_index(1, 4).tolist() == [0, 0, 0]


def test_stride4_model_pads_and_crops_back(models):
    seg = Segmenter(models["rgb_stride4"], config=CPU)
    frame = np.random.default_rng(2).integers(0, 256, (22, 30, 3), dtype=np.uint8)
    res = seg.predict(frame)
    assert res.labels.shape == (22, 30) and res.scores.shape == (3, 22, 30)
    # equals the model on the frame reflect-padded by hand to (24, 32)
    import onnxruntime as ort

    rgb = frame[:, :, ::-1]
    padded = cv2.copyMakeBorder(np.ascontiguousarray(rgb), 0, 2, 0, 2, cv2.BORDER_REFLECT_101)
    sess = ort.InferenceSession(str(models["rgb_stride4"]), providers=["CPUExecutionProvider"])
    (labels,) = sess.run(["labels"], {"image": padded.transpose(2, 0, 1)[None].copy()})
    np.testing.assert_array_equal(res.labels, labels[0, :22, :30])


def test_float_frames_in_unit_range_are_quantised():
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(validate_frame(f)[:, :, 0], [[0, 128, 255]])
    with pytest.raises(InvalidFrameError, match=r"must be in \[0, 1\]"):
        validate_frame(f * 255)
    with pytest.raises(InvalidFrameError, match="NaN or infinite"):
        validate_frame(np.array([[np.nan, 0.1]]))


def test_to_model_dtype_for_float_and_nhwc_graphs():
    batch = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2)
    assert to_model_dtype(batch, InputSpec(channels=3, color_order="rgb", mean=(0.5,) * 3, std=(0.5,) * 3)) is batch
    spec = InputSpec(channels=3, color_order="rgb", mean=(0.5,) * 3, std=(0.25,) * 3, dtype="float32",
                     normalized_in_graph=False, layout="NHWC")
    out = to_model_dtype(batch, spec)
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, (batch.transpose(0, 2, 3, 1) / 255.0 - 0.5) / 0.25, rtol=1e-6)


@pytest.mark.parametrize("channels, color_order", [(3, "rgb"), (3, "bgr"), (4, "rgbi")])
def test_split_fast_path_equals_plane_copies(channels, color_order):
    spec = InputSpec(channels=channels, color_order=color_order, mean=(0.5,) * channels, std=(0.5,) * channels)
    frame = validate_frame(np.random.default_rng(channels).integers(0, 256, (7, 11, channels), dtype=np.uint8))
    planes = model_planes(frame, spec, "bgr")
    order = channel_order(frame, spec, "bgr")
    assert order is not None
    fast, slow = np.zeros((channels, 7, 11), np.uint8), np.zeros((channels, 7, 11), np.uint8)
    fill_padded(fast, planes, frame, order)
    fill_padded(slow, planes)
    np.testing.assert_array_equal(fast, slow)
    assert channel_order(frame[:, :, :1], spec, "bgr") is None
