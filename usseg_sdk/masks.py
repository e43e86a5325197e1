"""Calibration masks: reading them, and how their pixel values become class ids.

Masks are single-channel images with the frame's stem. Two encodings are in use on inspection lines:

* **class ids** (``samples/neu-seg/masks``): 0 background, 1, 2, ... the classes, ``255`` ignored;
* **binary**: 0 background and 255 (or any value above a threshold) defect, often anti-aliased along the edges
  (a few values near 0 and near 255). Read as class ids, such masks go wrong silently: 255 is "ignore", so every
  labelled pixel is background; anti-aliased values become hundreds of classes.

:func:`detect_mask_encoding` reads every mask once and decides, with the reason (shown in the calibration report):
masks holding only 0 and 255 are binary; masks with values between 128 and 254 whose pixels cluster near 0 and 255
(mostly 0, at most 10 % in between) are anti-aliased binary masks, binarised at 128; other masks with such values
are refused (a picture saved as a mask). ``threshold`` (``--mask-threshold``) forces binary reading (values >=
threshold are the defect); class names other than two keep class ids.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from usseg_sdk.errors import CalibrationError

log = logging.getLogger(__name__)

# Label maps are not frames. What they are commonly called when saved beside their frames (frame_mask.png,
# frame-label.png, frame_GT.png), and the folders that hold them (an images/ + masks/ tree): the one rule that
# training's folder dataset and `usseg predict` both use to leave them out.
MASK_SUFFIXES = ("mask", "masks", "label", "labels", "gt", "groundtruth", "annotation", "seg", "segmentation")
MASK_FOLDERS = ("masks", "mask", "labels", "label", "annotations", "ann_dir", "gt", "groundtruth")

# An anti-aliased mask: at most this share of its pixels away from the ends (within 1/8 of the range of 0 or of
# the top value), and most pixels near 0. A picture saved as a mask has most of its pixels in between.
MAX_BETWEEN = 0.10


@dataclass(frozen=True)
class MaskEncoding:
    """How mask values become class ids: ``class_ids`` as they are, or ``binary`` (value >= threshold -> 1)."""

    kind: Literal["class_ids", "binary"] = "class_ids"
    threshold: int | None = None
    reason: str = "masks hold class ids (255 = ignore)"

    def apply(self, mask: np.ndarray) -> np.ndarray:
        if self.kind == "class_ids":
            return mask
        return (mask >= self.threshold).astype(np.uint8)

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "threshold": self.threshold, "reason": self.reason}


CLASS_IDS = MaskEncoding()


def is_mask_name(path: Path, suffixes: tuple[str, ...] = MASK_SUFFIXES) -> bool:
    """``frame_mask.png``, ``frame-GT.png``: a stem ending with ``_`` or ``-`` and one of ``suffixes`` (any case)."""
    stem = path.stem.lower()
    return any(stem.endswith((f"_{s.lower()}", f"-{s.lower()}")) for s in suffixes)


def in_skipped_folder(path: Path, root: Path, folders: tuple[str, ...] = MASK_FOLDERS) -> bool:
    """Whether a folder between ``root`` and ``path`` is hidden (``.x``) or one of ``folders`` (any case); ``root``
    itself never counts, so pointing at a ``masks/`` folder reads it."""
    excluded = {f.lower() for f in folders}
    return any(part.startswith(".") or part.lower() in excluded for part in path.relative_to(root).parts[:-1])


def load_mask(path: Path) -> np.ndarray:
    """A mask as stored (8 or 16 bit), single channel; CalibrationError naming the file when unusable."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise CalibrationError(f"cannot read mask {path}")
    if mask.ndim == 3:
        if not (mask == mask[:, :, :1]).all():
            raise CalibrationError(f"mask {path} has differing colour channels: masks are single-channel class ids")
        mask = mask[:, :, 0]
    return mask


def read_mask(path: Path, shape: tuple[int, int], encoding: MaskEncoding = CLASS_IDS) -> np.ndarray:
    """The mask of a frame of ``shape`` (H, W) as class ids."""
    mask = load_mask(path)
    if mask.shape != shape:
        raise CalibrationError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH), its image {shape[1]}x"
                               f"{shape[0]}")
    return encoding.apply(mask)


def value_counts(pairs: list[tuple[Path, Path]]) -> tuple[Counter[int], int]:
    """Pixels per mask value over all masks of ``pairs``, and the top value of their dtype (255, 65535)."""
    counts: Counter[int] = Counter()
    top = 255
    for _, mask_path in pairs:
        mask = load_mask(mask_path)
        top = max(top, int(np.iinfo(mask.dtype).max) if mask.dtype.kind in "ui" else 255)
        values, n = np.unique(mask, return_counts=True)
        counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
    return counts, top


def detect_mask_encoding(pairs: list[tuple[Path, Path]], threshold: int | None = None,
                         n_names: int | None = None) -> MaskEncoding:
    """How the masks of ``pairs`` encode classes (see the module docstring); logs the decision."""
    if threshold is not None:
        return _logged(MaskEncoding("binary", threshold, f"--mask-threshold {threshold}: values >= {threshold} "
                                                          "are the defect"))
    if n_names is not None and n_names != 2:
        return CLASS_IDS
    counts, top = value_counts(pairs)
    values, half = set(counts), (top + 1) // 2
    if top in values and values <= {0, top}:
        return _logged(MaskEncoding("binary", half, f"masks hold only 0 and {top}: read as binary ({top} = defect), "
                                                    f"not as {top} = ignore"))
    if not any(half <= v < top for v in values):
        return CLASS_IDS
    total, margin = sum(counts.values()), top // 8
    low = sum(n for v, n in counts.items() if v <= margin)
    near = low + sum(n for v, n in counts.items() if v >= top - margin)
    if total - near <= MAX_BETWEEN * total and low >= total / 2 and any(v >= top - margin for v in values):
        return _logged(MaskEncoding("binary", half, f"masks hold {len(values)} values clustered near 0 and {top} "
                                                    f"(anti-aliased): binarised at {half}"))
    between = 100.0 * (total - near) / total
    raise CalibrationError(f"mask values look like neither class ids nor a binary mask: {len(values)} distinct values "
                           f"from {min(values)} to {max(values)}, {between:.1f} % of the pixels far from 0 and {top}; "
                           "pass --mask-threshold T (values >= T are the defect), give --class-names for class-id "
                           "masks, or save masks of class ids")


def max_label(pairs: list[tuple[Path, Path]], ignore_index: int, encoding: MaskEncoding = CLASS_IDS) -> int:
    """The largest class id in the masks of ``pairs`` (ignoring ``ignore_index``): the class count is this + 1
    when no class names are given."""
    if encoding.kind == "binary":
        return 1
    counts, _ = value_counts(pairs)
    return max((v for v in counts if v != ignore_index), default=0)


def _logged(encoding: MaskEncoding) -> MaskEncoding:
    log.info("calibrate: %s", encoding.reason)
    return encoding
