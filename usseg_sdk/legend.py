"""The overlay legend: one entry per class shown — a swatch in the class colour and the name in light text on a
dark panel, so it reads on any frame and for any class colour (coloured text alone vanished, yellow on yellow).

Sizes follow the frame (the text is about 1/30 of the frame's shorter side, never below OpenCV's smallest legible
size). The legend goes on the frame, top left, only when its panel takes at most :data:`MAX_SHARE` of the frame
(shrunk towards the smallest legible size first); otherwise (a small frame, many classes) it is a strip below the
frame and covers nothing. ``usseg predict --no-legend`` leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MAX_SHARE = 1 / 10  # most of the frame a legend drawn on it may cover
FONT = cv2.FONT_HERSHEY_SIMPLEX
PANEL = (24, 24, 24)  # BGR
TEXT = (245, 245, 245)
MIN_SCALE, MAX_SCALE = 0.35, 1.5


@dataclass(frozen=True)
class _Layout:
    scale: float
    pad: int  # around and between entries, px
    swatch: int  # side of a swatch, px
    step: int  # height of one row, px
    positions: list[tuple[int, int]]  # top-left of each entry, relative to the panel
    size: tuple[int, int]  # (h, w) of the panel


def draw_legend(img: np.ndarray, names: list[str], colours: list[tuple[int, int, int]]) -> np.ndarray:
    """``img`` (BGR, changed in place) with the legend on it, or a new, taller picture with the legend below."""
    if not names:
        return img
    h, w = img.shape[:2]
    scale = float(np.clip(min(h, w) / 900, MIN_SCALE, MAX_SCALE))
    for shrink in (1.0, 0.85, 0.7, 0.55):
        inside = _layout(names, max(scale * shrink, MIN_SCALE), max_width=max(w // 2, 1))
        ph, pw = inside.size
        if ph * pw <= MAX_SHARE * h * w and ph <= h and pw <= w:
            region = img[:ph, :pw]
            region[:] = cv2.addWeighted(region, 0.2, np.full_like(region, PANEL), 0.8, 0.0)
            _draw_entries(region, names, colours, inside)
            return img
    below = _layout(names, scale, max_width=w)
    strip = np.full((below.size[0], w, 3), PANEL, np.uint8)
    _draw_entries(strip, names, colours, below)
    return np.concatenate([img, strip], axis=0)


def _layout(names: list[str], scale: float, max_width: int) -> _Layout:
    """Entries flow left to right in rows no wider than ``max_width`` (one entry a row at the least)."""
    (_, text_h), baseline = cv2.getTextSize("Ag", FONT, scale, 1)
    swatch = text_h + baseline
    pad = max(2, swatch // 3)
    step = swatch + pad
    positions, x, y, width = [], pad, pad, 0
    for name in names:
        entry = swatch + pad + cv2.getTextSize(name, FONT, scale, 1)[0][0]
        if x > pad and x + entry + pad > max_width:
            x, y = pad, y + step
        positions.append((x, y))
        x += entry + 2 * pad
        width = max(width, x - pad)
    return _Layout(scale, pad, swatch, step, positions, (y + step, width))


def _draw_entries(panel: np.ndarray, names: list[str], colours: list[tuple[int, int, int]], lay: _Layout) -> None:
    for name, colour, (x, y) in zip(names, colours, lay.positions, strict=True):
        s = lay.swatch
        cv2.rectangle(panel, (x, y), (x + s - 1, y + s - 1), tuple(int(c) for c in colour), cv2.FILLED)
        cv2.rectangle(panel, (x, y), (x + s - 1, y + s - 1), TEXT, 1)  # a dark class on the dark panel stays visible
        cv2.putText(panel, name, (x + s + lay.pad, y + s - lay.pad // 2 - 1), FONT, lay.scale, TEXT, 1, cv2.LINE_AA)
