"""Resizing, zero-padding and cropping of (image, label) pairs as numpy arrays, before they become tensors.

Follows IIC's ``pad_and_or_crop`` (``IIC:code/utils/segmentation/transforms.py`` L23-88) and PiCIE's eval
resize/centre crop (``PiCIE:data/coco_eval_dataset.py``):

* An image smaller than the crop is first zero-padded to at least the crop size with the image centred
  (IIC ``pad_if_too_small``), then cropped. Departure from IIC: padded *label* pixels are 255 (ignore), not 0;
  IIC pads labels with 0, which is a real class ("person" in fine COCO indexing).
* Random crops: the top-left corner is uniform over every position where the crop fits (IIC's random centre
  over ``[sz/2, h - sz/2]`` is the same set for even sizes).
* Centre crops: IIC puts the crop's corner at ``h // 2 - sz // 2``; PiCIE at ``round((h - sz) / 2)`` (Python 3
  rounding). They differ by at most one pixel; both are offered.
* Pre-scale (IIC ``pre_scale_factor``): cv2 INTER_LINEAR for images, INTER_NEAREST for labels, exactly as IIC.
  Shorter-side resize (PiCIE ``TF.resize(img, res)``): the long side is ``int(res * long / short)`` as
  torchvision 0.4 computes it; images use INTER_AREA when shrinking (PIL's bilinear resize, which PiCIE used,
  low-pass filters when shrinking; cv2's INTER_LINEAR does not) and INTER_LINEAR when enlarging; labels use
  INTER_NEAREST_EXACT, which samples pixel centres like PIL's NEAREST. Values are therefore close to, not
  bit-identical with, PiCIE's PIL pipeline.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

IGNORE_INDEX = 255
CentreRule = Literal["iic", "picie"]


def _resize_image(image: np.ndarray, size_wh: tuple[int, int], interpolation: int) -> np.ndarray:
    out = cv2.resize(image, size_wh, interpolation=interpolation)
    return out[:, :, None] if out.ndim == 2 else out  # cv2 drops a single channel axis


def scale_pair(image: np.ndarray, label: np.ndarray | None, factor: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize by ``factor`` (IIC's pre-scale): image (H, W, C) bilinear, label (H, W) nearest."""
    if factor == 1.0:
        return image, label
    # fx/fy as IIC passes them (not a dsize): cv2 then samples with exactly this factor
    out = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    image = out[:, :, None] if out.ndim == 2 else out
    if label is not None:
        label = cv2.resize(label, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    return image, label


def short_side_pair(
    image: np.ndarray, label: np.ndarray | None, short: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize so the shorter side is ``short`` (PiCIE's ``TF.resize(img, res)``), keeping the aspect ratio."""
    h, w = image.shape[:2]
    if min(h, w) == short:
        return image, label
    if h <= w:
        size_wh = (int(short * w / h), short)
    else:
        size_wh = (short, int(short * h / w))
    shrinking = short < min(h, w)
    image = _resize_image(image, size_wh, cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, size_wh, interpolation=cv2.INTER_NEAREST_EXACT)
    return image, label


def pad_to(image: np.ndarray, label: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-pad (label: 255-pad) to at least ``size`` x ``size``, the original centred as IIC does."""
    h, w = image.shape[:2]
    if h >= size and w >= size:
        return image, label
    new_h, new_w = max(h, size), max(w, size)
    top, left = new_h // 2 - h // 2, new_w // 2 - w // 2
    padded = np.zeros((new_h, new_w, image.shape[2]), dtype=image.dtype)
    padded[top : top + h, left : left + w] = image
    if label is not None:
        padded_label = np.full((new_h, new_w), IGNORE_INDEX, dtype=label.dtype)
        padded_label[top : top + h, left : left + w] = label
        label = padded_label
    return padded, label


def crop_at(
    image: np.ndarray, label: np.ndarray | None, top: int, left: int, size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    image = image[top : top + size, left : left + size]
    return image, (None if label is None else label[top : top + size, left : left + size])


def centre_offsets(h: int, w: int, size: int, rule: CentreRule = "iic") -> tuple[int, int]:
    """Top-left corner of a centred ``size`` crop in an (h, w) image already padded to at least ``size``."""
    if rule == "iic":
        return h // 2 - size // 2, w // 2 - size // 2
    return round((h - size) / 2.0), round((w - size) / 2.0)  # Python 3 round: half to even, as PiCIE ran


def centre_crop(
    image: np.ndarray, label: np.ndarray | None, size: int, rule: CentreRule = "iic"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad if smaller, then take the centred ``size`` x ``size`` window."""
    image, label = pad_to(image, label, size)
    top, left = centre_offsets(image.shape[0], image.shape[1], size, rule)
    return crop_at(image, label, top, left, size)
