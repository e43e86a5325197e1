"""Severstal run-length codec: masks <-> ``EncodedPixels`` strings, label maps <-> ``train.csv`` rows.

Format of the Kaggle "Severstal: Steel Defect Detection" competition (images 256x1600, defect classes 1-4):

* ``train.csv`` has the header ``ImageId,ClassId,EncodedPixels`` and one row per (image, class) present.
* ``EncodedPixels`` is a space-separated list of ``start length`` pairs. Pixels are numbered from **1**,
  **top to bottom, then left to right** (column-major, Fortran order): pixel 1 is (row 0, col 0), pixel 2 is
  (row 1, col 0), pixel H+1 is (row 0, col 1). Runs are sorted and do not overlap.

Encoding is vectorised: flatten the mask in column-major order, pad a 0 at both ends and take ``np.diff``; the
non-zero differences are the run starts (+1) and ends (-1). Malformed input raises
:class:`~usseg_sdk.errors.RLEError` naming what was wrong (and the line, for CSV files).

Example:
    >>> import numpy as np
    >>> mask = np.zeros((3, 4), dtype=bool)
    >>> mask[1:3, 0] = True               # pixels 2, 3 (column 0, rows 1-2)
    >>> mask[0, 1] = True                 # pixel 4 (column 1, row 0)
    >>> mask[:, 3] = True                 # pixels 10, 11, 12 (column 3)
    >>> encode(mask)
    '2 3 10 3'
    >>> bool((decode("2 3 10 3", (3, 4)) == mask).all())
    True
    >>> label = np.zeros((3, 4), dtype=np.uint8); label[0, 0] = 2; label[2, 3] = 1
    >>> label_map_to_rows("a.jpg", label)
    [('a.jpg', 1, '12 1'), ('a.jpg', 2, '1 1')]
    >>> bool((rows_to_label_map([(1, "12 1"), (2, "1 1")], (3, 4)) == label).all())
    True
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from usseg_sdk.atomic import write_text_atomic
from usseg_sdk.errors import RLEError

SEVERSTAL_SHAPE = (256, 1600)
CSV_HEADER = ("ImageId", "ClassId", "EncodedPixels")

_INTEGER = re.compile(r"[+-]?\d+")

Row = tuple[str, int, str]


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (bool, or integers 0/1) as Severstal ``start length`` pairs; ``""`` when empty.

    Example:
        >>> encode(np.array([[0, 1], [1, 1]]))   # column-major: pixels 2, 3, 4
        '2 3'
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RLEError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype != bool:
        if mask.dtype.kind not in "iu":
            raise RLEError(f"mask must be bool or integer 0/1, got dtype {mask.dtype}")
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise RLEError(f"mask must hold only 0 and 1, got values in [{mask.min()}, {mask.max()}]")
    flat = mask.ravel(order="F").astype(np.int8)  # (H*W,) column-major
    edges = np.diff(flat, prepend=0, append=0)  # (H*W+1,) +1 at a run start, -1 one past its end
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = starts + 1  # 1-indexed
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def decode(rle: str | None, shape: Sequence[int] = SEVERSTAL_SHAPE) -> np.ndarray:
    """Decode Severstal ``start length`` pairs to a bool mask of ``shape`` (H, W).

    An empty or all-whitespace string (or None, or a float NaN as pandas reads an empty cell) is an empty mask.

    Example:
        >>> decode("2 3", (2, 2)).astype(int).tolist()
        [[0, 1], [1, 1]]
    """
    height, width = _check_shape(shape)
    n_pixels = height * width
    starts, lengths = parse_runs(rle, n_pixels=n_pixels)
    # +1 at each run start, -1 one past its end; the runs are disjoint, so the running sum is 0/1.
    steps = np.zeros(n_pixels + 1, dtype=np.int8)
    steps[starts - 1] = 1
    steps[starts - 1 + lengths] -= 1
    flat = np.cumsum(steps[:-1], dtype=np.int8).astype(bool)  # (H*W,) column-major
    return np.ascontiguousarray(flat.reshape((width, height)).T)


def parse_runs(rle: str | None, n_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate ``start length`` pairs -> (starts, lengths), int64, starts 1-indexed.

    Checks: integer tokens, an even count, start >= 1, length >= 1, runs sorted and not overlapping, and, when
    ``n_pixels`` is given, no run past the last pixel.
    """
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"run-length string expected, got {type(rle).__name__}")
    tokens = rle.split()
    for i, tok in enumerate(tokens):
        if not _INTEGER.fullmatch(tok):
            raise RLEError(f"token {i} ({tok!r}) is not an integer")
    if len(tokens) % 2:
        raise RLEError(f"odd number of values ({len(tokens)}): expected 'start length' pairs")
    try:
        values = np.array(tokens, dtype=np.int64).reshape(-1, 2)  # (n_runs, 2)
    except OverflowError:
        raise RLEError("a value does not fit in 64 bits; no image has that many pixels") from None
    starts, lengths = values[:, 0], values[:, 1]
    _check_runs(starts, lengths, n_pixels)
    return starts, lengths


def _check_runs(starts: np.ndarray, lengths: np.ndarray, n_pixels: int | None) -> None:
    if (bad := np.flatnonzero(starts < 1)).size:
        raise RLEError(f"run {bad[0]} starts at {starts[bad[0]]}: starts are 1-indexed (>= 1)")
    if (bad := np.flatnonzero(lengths < 1)).size:
        raise RLEError(f"run {bad[0]} (start {starts[bad[0]]}) has length {lengths[bad[0]]}, must be >= 1")
    ends = starts + lengths - 1  # last pixel of each run, 1-indexed
    if (bad := np.flatnonzero(starts[1:] <= ends[:-1])).size:
        i = bad[0] + 1
        what = "overlaps" if starts[i] >= starts[i - 1] else "is before (runs must be sorted)"
        raise RLEError(
            f"run {i} (start {starts[i]}) {what} run {i - 1} (pixels {starts[i - 1]}..{ends[i - 1]})"
        )
    if n_pixels is not None and ends.size and ends[-1] > n_pixels:
        raise RLEError(
            f"run {ends.size - 1} (start {starts[-1]}, length {lengths[-1]}) ends at pixel {ends[-1]}, "
            f"past the end of the image ({n_pixels} pixels)"
        )


def label_map_to_rows(image_id: str, label_map: np.ndarray, classes: Iterable[int] | None = None) -> list[Row]:
    """One ``(image_id, class_id, rle)`` row per class present in an integer label map (H, W).

    Background 0 is never written. ``classes`` restricts which label values are written (e.g. ``(1, 2, 3, 4)``
    to drop an ignore value 255); by default every non-zero value present is. Rows are sorted by class id.
    """
    label_map = _check_label_map(label_map)
    present = np.unique(label_map)
    wanted = present if classes is None else np.intersect1d(present, np.asarray(list(classes), dtype=np.int64))
    return [(image_id, int(c), encode(label_map == c)) for c in wanted if c != 0]


def rows_to_label_map(rows: Iterable[Sequence], shape: Sequence[int] = SEVERSTAL_SHAPE) -> np.ndarray:
    """Paint rows onto a uint8 label map of ``shape`` (background 0).

    ``rows`` holds ``(class_id, rle)`` pairs (as :func:`read_csv` returns per image) or
    ``(image_id, class_id, rle)`` triples (as :func:`label_map_to_rows` returns). A pixel claimed by two
    classes raises :class:`RLEError`.
    """
    height, width = _check_shape(shape)
    label_map = np.zeros((height, width), dtype=np.uint8)
    for row in rows:
        class_id, rle = _class_and_rle(row)
        mask = decode(rle, (height, width))
        if (clash := np.flatnonzero(mask & (label_map != 0))).size:
            r, c = np.unravel_index(clash[0], mask.shape)
            raise RLEError(
                f"pixel (row {r}, col {c}) is claimed by class {label_map[r, c]} and class {class_id} "
                f"({clash.size} pixels overlap)"
            )
        label_map[mask] = class_id
    return label_map


def read_csv(path: str | os.PathLike) -> dict[str, list[tuple[int, str]]]:
    """Read a Severstal ``train.csv`` -> ``{image_id: [(class_id, rle), ...]}`` in file order.

    Every run string is validated (syntax, order, overlap; the image size is checked later by :func:`decode`).
    Errors name the file and line. Rows with an empty ``EncodedPixels`` are kept as ``(class_id, "")``.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
            raise RLEError(f"{path}: line 1: header must be {','.join(CSV_HEADER)!r}, got {header}")
        out: dict[str, list[tuple[int, str]]] = {}
        for fields in reader:
            line = reader.line_num
            if not fields:
                continue  # blank line
            image_id, class_id, rle = _parse_csv_row(fields, f"{path}: line {line}")
            if any(c == class_id for c, _ in out.get(image_id, ())):
                raise RLEError(f"{path}: line {line}: duplicate row for image {image_id!r} class {class_id}")
            out.setdefault(image_id, []).append((class_id, rle))
    return out


def write_csv(path: str | os.PathLike, rows: Iterable[Sequence]) -> Path:
    """Write ``(image_id, class_id, rle)`` rows as a Severstal CSV, atomically (readers never see half a file)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for i, row in enumerate(rows):
        if len(row) != 3:
            raise RLEError(f"row {i}: expected (image_id, class_id, rle), got {len(row)} values")
        image_id, class_id, rle = row
        if not isinstance(image_id, str) or not image_id:
            raise RLEError(f"row {i}: image_id must be a non-empty string, got {image_id!r}")
        class_id, rle = _class_and_rle((class_id, rle), where=f"row {i} ({image_id})")
        parse_runs(rle)
        writer.writerow((image_id, class_id, rle))
    return write_text_atomic(path, buf.getvalue())


def _parse_csv_row(fields: list[str], where: str) -> tuple[str, int, str]:
    if len(fields) != 3:
        raise RLEError(f"{where}: expected 3 fields (ImageId,ClassId,EncodedPixels), got {len(fields)}: {fields}")
    image_id, class_text, rle = (f.strip() for f in fields)
    if not image_id:
        raise RLEError(f"{where}: empty ImageId")
    if not _INTEGER.fullmatch(class_text) or not 1 <= int(class_text) <= 255:
        raise RLEError(f"{where}: ClassId must be an integer in 1..255, got {class_text!r}")
    try:
        parse_runs(rle)
    except RLEError as e:
        raise RLEError(f"{where}: EncodedPixels: {e}") from None
    return image_id, int(class_text), rle


def _class_and_rle(row: Sequence, where: str = "row") -> tuple[int, str]:
    if len(row) not in (2, 3):
        raise RLEError(f"{where}: expected (class_id, rle) or (image_id, class_id, rle), got {row!r}")
    class_id, rle = row[-2], row[-1]
    if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) or not 1 <= class_id <= 255:
        raise RLEError(f"{where}: class_id must be an integer in 1..255, got {class_id!r}")
    return int(class_id), rle


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
        raise RLEError(f"shape must be (H, W) with positive integers, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _check_label_map(label_map: np.ndarray) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise RLEError(f"label map must be 2-D (H, W), got shape {label_map.shape}")
    if label_map.dtype.kind not in "iu":
        raise RLEError(f"label map must hold integer class ids, got dtype {label_map.dtype}")
    if label_map.size and label_map.min() < 0:
        raise RLEError(f"label map holds negative class id {label_map.min()}")
    return label_map
