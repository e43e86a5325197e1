"""usseg_sdk.calibrate.max_label: the class count read from masks when no class names are given (the runtime's
``usseg calibrate`` and export's ``--calibrate`` both use it)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from usseg_sdk.calibrate import CalibrationError, max_label


def _mask(path, values):
    cv2.imwrite(str(path), np.asarray(values, np.uint8).reshape(2, 2))
    return path


def test_largest_class_id_over_all_masks_without_the_ignore_index(tmp_path):
    pairs = [(tmp_path / "a.jpg", _mask(tmp_path / "a.png", [0, 1, 255, 0])),
             (tmp_path / "b.jpg", _mask(tmp_path / "b.png", [0, 3, 0, 2])),
             (tmp_path / "c.jpg", _mask(tmp_path / "c.png", [255, 255, 255, 255]))]
    assert max_label(pairs, ignore_index=255) == 3
    assert max_label(pairs, ignore_index=3) == 255


def test_an_unreadable_mask_is_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(CalibrationError, match=r"cannot read mask .*bad\.png"):
        max_label([(tmp_path / "bad.jpg", bad)], ignore_index=255)
