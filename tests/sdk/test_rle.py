"""Severstal RLE codec: hand-worked examples, bit-exact round trips, CSV files and every malformed case."""

from __future__ import annotations

import doctest

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from usseg_sdk import rle
from usseg_sdk.errors import RLEError

# A 3x4 mask worked by hand. Pixel numbers (1-indexed, top to bottom, then left to right):
#    1  4  7 10
#    2  5  8 11
#    3  6  9 12
HAND_MASK = np.array(
    [
        [0, 1, 0, 1],
        [1, 0, 0, 1],
        [1, 0, 1, 0],
    ],
    dtype=bool,
)
# Set pixels: 2, 3, 4 (one run crossing from column 0 into column 1), 9, 10, 11 (crossing into column 3).
HAND_RLE = "2 3 9 3"


def test_hand_worked_mask_is_column_major_and_one_indexed():
    assert rle.encode(HAND_MASK) == HAND_RLE
    np.testing.assert_array_equal(rle.decode(HAND_RLE, (3, 4)), HAND_MASK)


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (np.zeros((3, 4), bool), ""),
        (np.ones((3, 4), bool), "1 12"),
        (np.eye(3, dtype=bool), "1 1 5 1 9 1"),  # the diagonal: pixels 1, 5, 9
        (np.array([[0, 0], [0, 1]], np.uint8), "4 1"),  # last pixel only
        (np.array([[1, 1, 1]], bool), "1 3"),  # a single row: column-major equals row-major
        (np.array([[1], [0], [1]], bool), "1 1 3 1"),  # a single column
    ],
)
def test_small_masks(mask, expected):
    assert rle.encode(mask) == expected
    np.testing.assert_array_equal(rle.decode(expected, mask.shape), mask.astype(bool))


def test_decode_is_not_the_transposed_row_major_reading():
    # A 2x3 mask whose first run is pixel 2: (row 1, col 0). Row-major numbering would put it at (0, 1).
    mask = rle.decode("2 1", (2, 3))
    assert mask[1, 0] and mask.sum() == 1


def test_decode_accepts_empty_inputs():
    for empty in ("", "   ", None, float("nan")):
        out = rle.decode(empty, (4, 5))
        assert out.shape == (4, 5) and out.dtype == bool and not out.any()


def test_decode_default_shape_is_severstal():
    out = rle.decode("1 256 409600 1")
    assert out.shape == (256, 1600)
    assert out[:, 0].all() and out[255, 1599] and out.sum() == 257


def test_label_map_rows_by_hand():
    label = np.array(
        [
            [0, 3, 0, 1],
            [3, 0, 0, 1],
            [3, 0, 255, 0],
        ],
        dtype=np.uint8,
    )
    rows = rle.label_map_to_rows("img.jpg", label)
    assert rows == [("img.jpg", 1, "10 2"), ("img.jpg", 3, "2 3"), ("img.jpg", 255, "9 1")]
    assert rle.label_map_to_rows("img.jpg", label, classes=(1, 2, 3, 4)) == rows[:2]
    np.testing.assert_array_equal(rle.rows_to_label_map(rows, label.shape), label)
    # (class_id, rle) pairs, as read_csv returns them, paint the same map.
    np.testing.assert_array_equal(rle.rows_to_label_map([r[1:] for r in rows], label.shape), label)


def test_background_only_label_map_has_no_rows():
    assert rle.label_map_to_rows("x", np.zeros((5, 5), np.uint8)) == []


def test_every_sample_mask_round_trips_bit_exactly(sample_dir):
    paths = sorted((sample_dir / "masks").glob("*.png"))
    assert len(paths) == 40
    n_rows = 0
    for path in paths:
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        rows = rle.label_map_to_rows(path.stem, label)
        n_rows += len(rows)
        assert {c for _, c, _ in rows} == set(np.unique(label).tolist()) - {0}
        back = rle.rows_to_label_map(rows, label.shape)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, label, err_msg=str(path))
    assert n_rows >= 40


def test_csv_round_trip(tmp_path, sample_dir):
    labels = {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((sample_dir / "masks").glob("*.png"))}
    rows = [row for image_id, label in labels.items() for row in rle.label_map_to_rows(f"{image_id}.jpg", label)]
    path = rle.write_csv(tmp_path / "train.csv", rows)
    assert path.read_text().splitlines()[0] == "ImageId,ClassId,EncodedPixels"
    table = rle.read_csv(path)
    assert [(image_id, c, r) for image_id, pairs in table.items() for c, r in pairs] == rows
    for image_id, label in labels.items():
        np.testing.assert_array_equal(rle.rows_to_label_map(table[f"{image_id}.jpg"], label.shape), label)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_read_csv_keeps_empty_rows_and_skips_blank_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3 10 2\n\nb.jpg,3,\na.jpg,4,20 1\n")
    assert rle.read_csv(path) == {"a.jpg": [(1, "1 3 10 2"), (4, "20 1")], "b.jpg": [(3, "")]}


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_random_masks_round_trip(mask):
    text = rle.encode(mask)
    np.testing.assert_array_equal(rle.decode(text, mask.shape), mask)
    starts, lengths = rle.parse_runs(text, n_pixels=mask.size)
    assert lengths.sum() == mask.sum()
    assert (starts[1:] > starts[:-1] + lengths[:-1]).all()  # maximal runs: never adjacent


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 10), st.integers(1, 10)), elements=st.integers(0, 4)))
def test_random_label_maps_round_trip(label):
    rows = rle.label_map_to_rows("x", label)
    np.testing.assert_array_equal(rle.rows_to_label_map(rows, label.shape), label)


def test_full_size_random_mask_round_trips():
    mask = np.random.default_rng(0).random((256, 1600)) < 0.3
    np.testing.assert_array_equal(rle.decode(rle.encode(mask), mask.shape), mask)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 5", "odd number of values"),
        ("1 2 x 3", "token 2 ('x') is not an integer"),
        ("1 2.5", "not an integer"),
        ("0 3", "1-indexed"),
        ("-4 3", "1-indexed"),
        ("3 0", "length 0"),
        ("10 3 11 2", "overlaps"),
        ("10 3 12 2", "overlaps"),
        ("10 3 2 2", "sorted"),
        ("11 3", "ends at pixel 13, past the end of the image (12 pixels)"),
        ("12 1 13 1", "past the end"),
        ("99999999999999999999 1", "64 bits"),
    ],
)
def test_malformed_runs_raise(text, message):
    with pytest.raises(RLEError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rle.decode(text, (3, 4))


def test_rle_error_is_a_value_error():
    with pytest.raises(ValueError):
        rle.decode("1", (3, 4))


def test_two_classes_claiming_a_pixel_raise():
    with pytest.raises(RLEError, match=r"pixel \(row 1, col 0\) is claimed by class 1 and class 2"):
        rle.rows_to_label_map([(1, "1 3"), (2, "2 1")], (3, 4))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(0, "1 1")], "class_id must be an integer in 1..255"),
        ([(256, "1 1")], "class_id must be an integer in 1..255"),
        ([("1", "1 1")], "class_id must be an integer"),
        ([(1,)], "expected \\(class_id, rle\\)"),
    ],
)
def test_bad_rows_raise(rows, message):
    with pytest.raises(RLEError, match=message):
        rle.rows_to_label_map(rows, (3, 4))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((2, 2, 1), bool), "2-D"),
        (np.zeros((2, 2), np.float32), "dtype float32"),
        (np.full((2, 2), 2, np.uint8), "only 0 and 1"),
    ],
)
def test_encode_rejects_bad_masks(bad, message):
    with pytest.raises(RLEError, match=message):
        rle.encode(bad)


def test_label_map_and_shape_checks():
    with pytest.raises(RLEError, match="integer class ids"):
        rle.label_map_to_rows("x", np.zeros((2, 2), np.float64))
    with pytest.raises(RLEError, match="negative"):
        rle.label_map_to_rows("x", -np.ones((2, 2), np.int64))
    with pytest.raises(RLEError, match="shape must be"):
        rle.decode("1 1", (3, 0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ImageId,EncodedPixels\na.jpg,1 2\n", "line 1: header must be"),
        ("", "line 1: header must be"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\nb.jpg,1\n", "line 3: expected 3 fields"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,one,1 2\n", "line 2: ClassId must be an integer"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,0,1 2\n", "line 2: ClassId must be an integer in 1..255"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2 3\n", "line 2: EncodedPixels: odd number"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,5 2 1 1\n", "line 2: EncodedPixels: .*sorted"),
        ("ImageId,ClassId,EncodedPixels\n,1,1 2\n", "line 2: empty ImageId"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\na.jpg,1,9 2\n", "line 3: duplicate row"),
    ],
)
def test_malformed_csv_raises_with_line_number(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(RLEError, match=message) as info:
        rle.read_csv(path)
    assert str(path) in str(info.value)


def test_write_csv_validates_rows_and_leaves_old_file(tmp_path):
    path = tmp_path / "out.csv"
    rle.write_csv(path, [("a.jpg", 1, "1 2")])
    before = path.read_text()
    for rows, message in [
        ([("a.jpg", 1, "1 2 3")], "odd number"),
        ([("a.jpg", 9999, "1 2")], "class_id must be"),
        ([("", 1, "1 2")], "image_id must be"),
        ([("a.jpg", 1)], "expected \\(image_id, class_id, rle\\)"),
    ]:
        with pytest.raises(RLEError, match=message):
            rle.write_csv(path, rows)
    assert path.read_text() == before


def test_module_examples_run():
    result = doctest.testmod(rle)
    assert result.attempted >= 5 and result.failed == 0
