"""Tiling: plans cover the frame exactly once, and tiled predictions equal untiled ones where the overlap covers
the receptive field (frames larger than the tile in both directions, sizes that are not tile multiples)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sdk.onnx_models import RF_RADIUS
from usseg_sdk import Segmenter, SegmenterConfig
from usseg_sdk.config import SegmenterConfigError
from usseg_sdk.tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, axis_starts, budget_tile, plan_tiles


@settings(max_examples=200, deadline=None)
@given(length_units=st.integers(1, 200), tile_units=st.integers(2, 40), stride=st.sampled_from([1, 2, 4, 8]),
       overlap_frac=st.floats(0, 0.49))
def test_plan_covers_every_pixel_once_with_the_nearest_centre(length_units, tile_units, stride, overlap_frac):
    length, tile = length_units * stride, tile_units * stride
    overlap = int(overlap_frac * tile)
    if tile - overlap < stride:
        return
    grid = plan_tiles((length, length + stride), (tile, tile), overlap, stride)
    cover = np.zeros((length, length + stride), np.int32)
    for t in grid:
        assert t.y0 % stride == 0 and t.x0 % stride == 0
        assert t.y0 <= t.keep_y0 < t.keep_y1 <= t.y0 + t.h and t.x0 <= t.keep_x0 < t.keep_x1 <= t.x0 + t.w
        cover[t.keep_y0:t.keep_y1, t.keep_x0:t.keep_x1] += 1
    assert (cover == 1).all()
    starts = axis_starts(length, min(tile, length), overlap, stride)
    th = min(tile, length)
    for a, b in itertools.pairwise(starts):
        assert a + th - b >= min(overlap, th)  # neighbours share at least `overlap` pixels
    # each kept pixel is in the tile whose centre is nearest (farthest from a tile border)
    centres = np.array(starts) + (th - 1) / 2
    keeps = [(t.keep_y0, t.keep_y1) for t in grid if t.x0 == 0]
    for i, (k0, k1) in enumerate(keeps):
        for y in (k0, k1 - 1):
            d = np.abs(centres - y)
            assert d[i] <= d.min() + 0.5


@pytest.mark.parametrize("name, size, tile, overlap", [
    ("grey", (83, 131), (32, 48), 2 * RF_RADIUS[1]),
    ("grey", (70, 200), (64, 64), 2 * RF_RADIUS[1] + 3),
    ("rgb_stride4", (90, 141), (48, 64), 2 * RF_RADIUS[4] + 2),
])
def test_tiled_prediction_equals_untiled(models, name, size, tile, overlap):
    channels = 3 if name.startswith("rgb") else 1
    rng = np.random.default_rng(sum(size))
    frame = rng.integers(0, 256, (*size, channels) if channels == 3 else size, dtype=np.uint8)
    whole = Segmenter(models[name], config=SegmenterConfig(device="cpu", tiling=False)).predict(frame)
    seg = Segmenter(models[name], config=SegmenterConfig(device="cpu", tile_size=tile, overlap=overlap, batch_size=3))
    assert seg._tile is not None and size[0] > tile[0] and size[1] > tile[1]
    tiled = seg.predict(frame)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    np.testing.assert_array_equal(tiled.clusters, whole.clusters)
    if whole.scores is not None:
        np.testing.assert_allclose(tiled.scores, whole.scores, atol=1e-5)


def test_too_little_overlap_shows_seams(models):
    """The check above can fail: without overlap the tile borders differ from the untiled prediction."""
    frame = np.random.default_rng(3).integers(0, 256, (96, 144), dtype=np.uint8)  # exactly 3 x 3 tiles
    whole = Segmenter(models["grey"], config=SegmenterConfig(device="cpu", tiling=False)).predict(frame)
    config = SegmenterConfig(device="cpu", tile_size=(32, 48), overlap=0)
    tiled = Segmenter(models["grey"], config=config).predict(frame)
    assert (tiled.labels != whole.labels).any()


def test_meta_tiling_defaults_and_override(models):
    frame = np.random.default_rng(4).integers(0, 256, (100, 150), dtype=np.uint8)
    seg = Segmenter(models["tiled_meta"], config=SegmenterConfig(device="cpu"))
    assert seg._tile == (40, 64) and seg._overlap == 8
    whole = Segmenter(models["tiled_meta"], config=SegmenterConfig(device="cpu", tiling=False))
    assert whole._tile is None
    np.testing.assert_array_equal(seg.predict(frame).labels, whole.predict(frame).labels)
    small = Segmenter(models["tiled_meta"], config=SegmenterConfig(device="cpu", tile_size=(24, 24), overlap=6))
    assert small._tile == (24, 24)
    np.testing.assert_array_equal(small.predict(frame).labels, whole.predict(frame).labels)


# -- the pixel budget: frames above it are tiled without a tile size, and no backend call gets more ------------
@pytest.mark.parametrize("size, budget, stride", [((3000, 4000), 4_000_000, 8), ((256, 100_000), 4_000_000, 8),
                                                  ((1000, 1000), 250_000, 1), ((96, 4000), 40_000, 4)])
def test_budget_tile_fits_the_budget_and_the_frame(size, budget, stride):
    tile = budget_tile(size, budget, overlap=32, stride=stride)
    assert tile is not None and tile[0] * tile[1] <= budget
    assert tile[0] % stride == 0 and tile[1] % stride == 0 and tile[0] <= size[0] and tile[1] <= size[1]
    if min(size) ** 2 <= budget:  # a strip keeps its short side whole
        assert min(size) in tile
    grid = plan_tiles(size, tile, 32, stride)
    cover = np.zeros(size, np.int8)
    for t in grid:
        cover[t.keep_y0:t.keep_y1, t.keep_x0:t.keep_x1] += 1
    assert (cover == 1).all()
    assert budget_tile((100, 100), 10_000, overlap=32) is None  # fits: not tiled


def _calls(seg, monkeypatch) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    run = seg.backend.run

    def spy(feeds, names):
        shapes.append(next(iter(feeds.values())).shape)
        return run(feeds, names)

    monkeypatch.setattr(seg.backend, "run", spy)
    return shapes


def test_frames_above_the_budget_are_tiled_and_equal_untiled(models, monkeypatch):
    frame = np.random.default_rng(5).integers(0, 256, (150, 170), dtype=np.uint8)
    whole = Segmenter(models["grey"], config=SegmenterConfig(device="cpu", tiling=False)).predict(frame)
    config = SegmenterConfig(device="cpu", max_pixels=2_000, overlap=2 * RF_RADIUS[1])
    seg = Segmenter(models["grey"], config=config)
    calls = _calls(seg, monkeypatch)
    tiled = seg.predict(frame)
    assert len(calls) > 1 and all(b * h * w <= 2_000 for b, _, h, w in calls)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    np.testing.assert_allclose(tiled.scores, whole.scores, atol=1e-5)
    calls.clear()
    seg.predict(frame[:40, :45])  # under the budget: one call, the whole frame
    assert [c[2:] for c in calls] == [(40, 45)]


def test_batches_are_cut_to_the_budget(models, monkeypatch):
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu", max_pixels=3_300, overlap=4, batch_size=8))
    calls = _calls(seg, monkeypatch)
    seg.predict_batch([np.zeros((40, 40), np.uint8)] * 5)
    assert [c[0] for c in calls] == [2, 2, 1]


def test_a_model_without_a_budget_gets_the_runtime_default(models):
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu"))
    assert seg._max_pixels == DEFAULT_MAX_PIXELS and seg._overlap == DEFAULT_OVERLAP
    assert Segmenter(models["tiled_meta"], config=SegmenterConfig(device="cpu"))._max_pixels is None  # its tile
    assert Segmenter(models["grey"], config=SegmenterConfig(device="cpu", tiling=False))._max_pixels is None
    with pytest.raises(SegmenterConfigError, match="max_pixels"):
        Segmenter(models["grey"], config=SegmenterConfig(device="cpu", max_pixels=100))
