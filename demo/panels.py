"""Stage 4: the pictures a person looks at — frame | ground truth | prediction, side by side, with a legend.

Both coloured panels come from ``Segmentation.overlay`` (the runtime's own drawing: defect classes blended in
their model colours and outlined, background left grey), the ground truth drawn as if it were a prediction, so
the two read the same way. Each panel is the frame enlarged ``scale`` times (nearest neighbour: pixels stay
pixels) under a title bar; a legend strip with the class colours runs along the bottom.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from demo.settings import DemoError
from usseg_sdk.meta import ModelMeta
from usseg_sdk.result import Segmentation

TITLE_H = 34  # pixels of a panel's title bar
LEGEND_H = 40
GAP = 6  # pixels between panels
FONT = cv2.FONT_HERSHEY_SIMPLEX
BAR = (32, 32, 32)  # BGR of the title / legend strips
TEXT = (235, 235, 235)


def panel_size(frame_hw: tuple[int, int], scale: int) -> tuple[int, int]:
    """(H, W) of the picture :func:`comparison_panel` draws for a frame of ``frame_hw``."""
    h, w = frame_hw
    return TITLE_H + h * scale + LEGEND_H, 3 * w * scale + 2 * GAP


def comparison_panel(frame: np.ndarray, truth: np.ndarray, prediction: Segmentation, title: str,
                     prediction_title: str, scale: int = 2, alpha: float = 0.5) -> np.ndarray:
    """BGR uint8 picture of ``panel_size(frame.shape[:2], scale)``."""
    if truth.shape != prediction.shape or frame.shape[:2] != prediction.shape:
        raise DemoError(f"{title}: frame {frame.shape[:2]}, mask {truth.shape} and prediction {prediction.shape} "
                        "differ in size")
    gt = Segmentation(labels=truth, meta=prediction.meta).overlay(frame, alpha=alpha)
    pred = prediction.overlay(frame, alpha=alpha)
    plain = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame[:, :, :3]
    panels = [_titled(img, text, scale) for img, text in
              ((plain, title), (gt, "ground truth"), (pred, prediction_title))]
    gap = np.full((panels[0].shape[0], GAP, 3), 255, np.uint8)
    row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    return np.concatenate([row, _legend(prediction.meta, row.shape[1])], axis=0)


def _titled(img: np.ndarray, text: str, scale: int) -> np.ndarray:
    big = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    bar = np.full((TITLE_H, big.shape[1], 3), BAR, np.uint8)
    cv2.putText(bar, text, (8, TITLE_H - 11), FONT, 0.6, TEXT, 1, cv2.LINE_AA)
    return np.concatenate([bar, big], axis=0)


def _legend(meta: ModelMeta, width: int) -> np.ndarray:
    strip = np.full((LEGEND_H, width, 3), BAR, np.uint8)
    x = 8
    for info in meta.classes:
        colour = tuple(int(v) for v in info.color[::-1])  # meta colours are RGB
        swatch = colour if info.defect else (128, 128, 128)
        cv2.rectangle(strip, (x, 11), (x + 18, 29), swatch, -1)
        label = info.name if info.defect else f"{info.name} (not painted)"
        cv2.putText(strip, label, (x + 26, 26), FONT, 0.55, TEXT, 1, cv2.LINE_AA)
        x += 26 + cv2.getTextSize(label, FONT, 0.55, 1)[0][0] + 24
    return strip


def write_panels(out: Path, ids: list[str], frames: list[np.ndarray], masks: list[np.ndarray],
                 predictions: list[Segmentation], prediction_title: str, captions: dict[str, str]) -> list[Path]:
    """``out/<id>.png`` for every frame; ``captions[id]`` is appended to the prediction's title."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ident, frame, mask, pred in zip(ids, frames, masks, predictions, strict=True):
        title = prediction_title + (f"  {captions[ident]}" if captions.get(ident) else "")
        picture = comparison_panel(frame, mask, pred, f"frame {ident}", title)
        path = out / f"{ident}.png"
        if not cv2.imwrite(str(path), picture):
            raise DemoError(f"cannot write {path}")
        paths.append(path)
    return paths
