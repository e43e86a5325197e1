"""The overlay legend: a colour swatch and the name in light text on a dark panel (readable on any colour), sized
with the frame, on the frame only when it takes at most a tenth of it, else in a strip below the frame."""

from __future__ import annotations

import numpy as np

from usseg_sdk.meta import ClassInfo, InputSpec, ModelMeta
from usseg_sdk.result import Segmentation

YELLOW = (255, 225, 25)  # RGB


def _meta(n_classes: int, colour=None) -> ModelMeta:
    classes = [ClassInfo(name="background", color=(40, 40, 40), defect=False)]
    classes += [ClassInfo(name=f"defect_{i}", color=colour or (30 + 10 * i, 200, 255 - 10 * i))
                for i in range(1, n_classes)]
    return ModelMeta(method="test", n_clusters=n_classes, classes=classes, cluster_to_class=list(range(n_classes)),
                     input=InputSpec(channels=3, color_order="bgr", mean=(0.5,) * 3, std=(0.25,) * 3))


def _stripes(shape, n_classes) -> np.ndarray:
    """Every class present, in vertical stripes."""
    return (np.arange(shape[1])[None, :] * n_classes // shape[1]).repeat(shape[0], 0).astype(np.uint8)


def _changed(seg: Segmentation) -> np.ndarray:
    plain, legend = seg.overlay(), seg.overlay(legend=True)
    return (plain != legend[: plain.shape[0]]).any(axis=2)


def test_legend_has_swatches_in_the_class_colours_on_a_dark_panel():
    frame = np.full((300, 400, 3), YELLOW[::-1], np.uint8)  # yellow frame, yellow class: coloured text was unreadable
    labels = np.zeros((300, 400), np.uint8)
    labels[200:, 300:] = 1
    seg = Segmentation(labels=labels, meta=_meta(2, colour=YELLOW), frame=frame)
    img = seg.overlay(legend=True)
    assert img.shape == frame.shape
    ys, xs = np.nonzero(_changed(seg))
    box = img[ys.min():ys.max() + 1, xs.min():xs.max() + 1].reshape(-1, 3).astype(int)
    swatch = (np.abs(box - np.array(YELLOW[::-1])) <= 2).all(axis=1).sum()
    dark = (box.max(axis=1) < 90).sum()
    light = (box.min(axis=1) > 160).sum()  # the text, and the swatch border
    assert swatch >= 25 and dark > box.shape[0] / 3 and light > 10  # a swatch, a dark panel, light text


def test_legend_takes_at_most_a_tenth_of_the_frame_and_scales_with_it():
    areas, heights = [], []
    for side in (240, 960):
        labels = _stripes((side, side), 4)
        seg = Segmentation(labels=labels, meta=_meta(4), frame=np.full((side, side, 3), 128, np.uint8))
        ys, xs = np.nonzero(_changed(seg))
        heights.append(ys.max() - ys.min() + 1)
        areas.append((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) / side**2)
        assert seg.overlay(legend=True).shape == (side, side, 3)
    assert max(areas) <= 1 / 10
    assert heights[1] > 1.5 * heights[0]


def test_a_small_frame_with_many_clusters_gets_the_legend_below_it():
    labels = _stripes((103, 103), 20)
    seg = Segmentation(labels=labels, meta=_meta(20), frame=np.full((103, 103, 3), 90, np.uint8))
    img = seg.overlay(legend=True)
    assert img.shape[0] > 103 and img.shape[1] == 103
    np.testing.assert_array_equal(img[:103], seg.overlay())  # the frame itself is not covered
    strip = img[103:]
    for info in seg.meta.classes[1:]:  # every painted class has its swatch
        assert (strip == np.array(info.color[::-1], np.uint8)).all(axis=2).sum() >= 9, info.name


def test_only_painted_classes_in_the_frame_are_listed():
    labels = np.zeros((300, 300), np.uint8)
    clean = Segmentation(labels=labels.copy(), meta=_meta(3), frame=np.full((300, 300, 3), 128, np.uint8))
    assert not _changed(clean).any()  # nothing painted, nothing to explain
    labels[:10, :10] = 2
    seg = Segmentation(labels=labels, meta=_meta(3), frame=np.full((300, 300, 3), 128, np.uint8))
    img = seg.overlay(legend=True, contours=False)  # the blend never hits a class colour exactly: only swatches
    colours = {c: (img == np.array(seg.meta.classes[c].color[::-1], np.uint8)).all(axis=2).sum() for c in (1, 2)}
    assert colours[1] == 0 and colours[2] > 0


def test_legend_on_a_200px_overlay_covers_at_most_a_tenth():
    """Issue 13.11: the legend covered a quarter of a 200 px overlay."""
    for n_classes in (2, 4, 6):
        labels = _stripes((200, 200), n_classes)
        seg = Segmentation(labels=labels, meta=_meta(n_classes), frame=np.full((200, 200, 3), 128, np.uint8))
        changed = _changed(seg)
        if changed.any():
            ys, xs = np.nonzero(changed)
            assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) <= 0.1 * 200 * 200, n_classes
        else:  # too big for a tenth: below the frame
            assert seg.overlay(legend=True).shape[0] > 200
