"""Reading images: BGR -> RGB, grey <-> RGB, bit depths, alpha, unreadable files and colour masks."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data.image_io import read_image, read_label
from training.errors import DataError


def _write(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array)
    return path


def test_colour_png_comes_back_as_rgb(tmp_path):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[:, :2] = (255, 0, 0)  # red
    rgb[:, 2:4] = (0, 255, 0)  # green
    rgb[:, 4:] = (0, 0, 255)  # blue
    path = _write(tmp_path / "c.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # cv2 writes BGR
    image = read_image(path, channels=3)
    assert image.shape == (4, 6, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image, rgb.astype(np.float32) / 255)


def test_grey_conversion_uses_cv2_weights_on_rgb(tmp_path):
    rgb = np.array([[[200, 50, 10], [0, 0, 255]]], dtype=np.uint8)  # (1, 2, 3)
    path = _write(tmp_path / "c.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    grey = read_image(path, channels=1)
    expected = (rgb.astype(np.float64) / 255) @ np.array([0.299, 0.587, 0.114])  # (1, 2)
    assert grey.shape == (1, 2, 1)
    np.testing.assert_allclose(grey[:, :, 0], expected, atol=1e-6)  # float, not rounded to 8 bits


def test_grey_file_is_repeated_to_rgb_and_kept_as_grey(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = _write(tmp_path / "g.png", grey)
    rgb = read_image(path, channels=3)
    assert rgb.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], grey / np.float32(255))
    np.testing.assert_array_equal(read_image(path, channels=1)[:, :, 0], grey / np.float32(255))


def test_sixteen_bit_png_scales_by_the_type_range_or_max_value(tmp_path):
    data = np.array([[0, 4095, 65535]], dtype=np.uint16)
    path = _write(tmp_path / "d.png", data)
    np.testing.assert_allclose(read_image(path, channels=1)[0, :, 0], [0, 4095 / 65535, 1.0], rtol=1e-6)
    np.testing.assert_allclose(read_image(path, channels=1, max_value=4095)[0, :, 0], [0, 1, 1], rtol=1e-6)


def test_sixteen_bit_tiff(tmp_path):
    data = np.full((2, 3), 32768, dtype=np.uint16)
    path = _write(tmp_path / "d.tif", data)
    np.testing.assert_allclose(read_image(path, channels=3), 32768 / 65535, rtol=1e-6)


def test_alpha_channel_is_dropped(tmp_path):
    bgra = np.zeros((2, 2, 4), dtype=np.uint8)
    bgra[..., 2] = 255  # red in BGR order
    bgra[..., 3] = 7  # alpha
    image = read_image(_write(tmp_path / "a.png", bgra), channels=3)
    np.testing.assert_array_equal(image[0, 0], [1.0, 0.0, 0.0])


def test_unreadable_and_missing_files_are_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        read_image(bad, channels=3)
    with pytest.raises(DataError, match=r"absent\.png"):
        read_image(tmp_path / "absent.png", channels=3)


def test_label_must_be_single_channel_8_bit(tmp_path):
    label = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(read_label(_write(tmp_path / "m.png", label)), label)
    with pytest.raises(DataError, match="3 channels"):
        read_label(_write(tmp_path / "colour.png", np.zeros((2, 2, 3), np.uint8)))
    with pytest.raises(DataError, match="uint16"):
        read_label(_write(tmp_path / "deep.png", np.zeros((2, 2), np.uint16)))
