"""Padding, crops and resizes of (image, label) pairs."""

import numpy as np
import pytest

from training.data.crop_resize import (
    IGNORE_INDEX,
    centre_crop,
    centre_offsets,
    pad_to,
    scale_pair,
    short_side_pair,
)


def _pair(h, w, c=3):
    image = np.arange(h * w * c, dtype=np.float32).reshape(h, w, c) + 1  # no zeros inside the image
    label = (np.arange(h * w).reshape(h, w) % 7).astype(np.uint8)
    return image, label


def test_pad_centres_the_image_with_zero_image_and_ignore_label():
    image, label = _pair(3, 5)
    pimage, plabel = pad_to(image, label, 8)
    assert pimage.shape == (8, 8, 3) and plabel.shape == (8, 8)
    top, left = 8 // 2 - 3 // 2, 8 // 2 - 5 // 2  # IIC's pad_if_too_small placement
    np.testing.assert_array_equal(pimage[top : top + 3, left : left + 5], image)
    np.testing.assert_array_equal(plabel[top : top + 3, left : left + 5], label)
    outside = np.ones((8, 8), bool)
    outside[top : top + 3, left : left + 5] = False
    assert (pimage[outside] == 0).all() and (plabel[outside] == IGNORE_INDEX).all()


def test_pad_only_grows_the_short_side():
    image, label = _pair(10, 4)
    pimage, plabel = pad_to(image, label, 6)
    assert pimage.shape[:2] == (10, 6) and plabel.shape == (10, 6)
    assert pad_to(image, None, 3)[0] is image


@pytest.mark.parametrize(("h", "size", "iic", "picie"), [(10, 4, 3, 3), (11, 4, 3, 4), (9, 4, 2, 2), (13, 4, 4, 4)])
def test_centre_offset_rules(h, size, iic, picie):
    assert centre_offsets(h, h, size, "iic") == (iic, iic)
    assert centre_offsets(h, h, size, "picie") == (picie, picie)  # round half to even, as Python 3


def test_centre_crop_keeps_image_and_label_aligned():
    image, label = _pair(9, 12)
    cimage, clabel = centre_crop(image, label, 4)
    top, left = centre_offsets(9, 12, 4)
    np.testing.assert_array_equal(cimage, image[top : top + 4, left : left + 4])
    np.testing.assert_array_equal(clabel, label[top : top + 4, left : left + 4])


def test_scale_pair_uses_nearest_for_labels():
    image, label = _pair(30, 60, c=1)
    simage, slabel = scale_pair(image, label, 0.33)
    assert simage.shape == (10, 20, 1) and slabel.shape == (10, 20)  # cv2 rounds 9.9 / 19.8
    assert set(np.unique(slabel)) <= set(np.unique(label))  # no interpolated class values


def test_short_side_resize_matches_torchvision_sizes():
    image, label = _pair(427, 640)
    simage, slabel = short_side_pair(image, label, 320)
    assert simage.shape == (320, int(320 * 640 / 427), 3) and slabel.shape == (320, 479)
    tall, _ = short_side_pair(*_pair(500, 375), 320)
    assert tall.shape[:2] == (int(320 * 500 / 375), 320)
    assert short_side_pair(image, None, 427)[0] is image
