"""Segmentation: what ``Segmenter.predict`` returns — the class map and what a line needs from it.

``labels`` (H, W) uint8 is at the frame's resolution. ``defects()`` lists connected regions of the defect
classes (``ClassInfo.defect``), ``to_rle()`` gives Severstal-format rows, ``overlay()`` a BGR picture for a
person. Scores, when the model has them, are the summed cluster probabilities of each class.

Example:
    >>> import numpy as np
    >>> from usseg_sdk.meta import InputSpec, ModelMeta
    >>> meta = ModelMeta.uncalibrated(method="iic", n_clusters=2, input=InputSpec(
    ...     channels=1, color_order="gray", mean=(0.5,), std=(0.25,)))
    >>> labels = np.zeros((4, 6), np.uint8); labels[1:3, 2:5] = 1
    >>> seg = Segmentation(labels=labels, meta=meta)
    >>> [(d.class_name, d.area, d.bbox) for d in seg.defects()]
    [('cluster_1', 6, (2, 1, 3, 2))]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from usseg_sdk.legend import draw_legend
from usseg_sdk.meta import ModelMeta


@dataclass(frozen=True)
class Defect:
    """One connected region of a defect class. ``bbox`` is (x, y, w, h) and ``centroid`` (x, y), in pixels."""

    class_id: int
    class_name: str
    area: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    mean_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Segmentation:
    """The prediction for one frame.

    Attributes:
        labels: (H, W) uint8 class ids (indices into ``meta.classes``).
        meta: the model's metadata (class names, colours, which classes are defects).
        clusters: (H, W) uint8 raw cluster ids, or None when not requested.
        scores: (n_classes, H, W) float32 class scores, or None when the model has none or they were disabled.
        frame: the frame as passed to ``predict`` (a reference, not a copy) for :meth:`overlay`.
    """

    labels: np.ndarray
    meta: ModelMeta
    clusters: np.ndarray | None = None
    scores: np.ndarray | None = None
    frame: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))

    def mask(self, cls: int | str) -> np.ndarray:
        """Boolean (H, W) mask of one class, by id or name."""
        return self.labels == self._class_id(cls)

    def class_areas(self) -> dict[str, int]:
        """Pixels per class name (every class, zeros included)."""
        counts = np.bincount(self.labels.ravel(), minlength=self.meta.n_classes)
        return {name: int(counts[i]) for i, name in enumerate(self.meta.class_names)}

    def defects(self, min_area: int = 0, classes: list[int | str] | None = None,
                connectivity: int = 8) -> list[Defect]:
        """Connected components of each defect class (``ClassInfo.defect``), largest first within a class.

        ``classes`` restricts to some classes (ids or names, defect or not); ``min_area`` drops smaller regions.
        ``mean_score`` is the mean of the class's score over the region when scores exist, else None.
        """
        ids = ([self._class_id(c) for c in classes] if classes is not None
               else [i for i, c in enumerate(self.meta.classes) if c.defect])
        found: list[Defect] = []
        for cid in ids:
            found.extend(self._components(cid, min_area, connectivity))
        return found

    def _components(self, cid: int, min_area: int, connectivity: int) -> list[Defect]:
        mask = (self.labels == cid).view(np.uint8)
        if not mask.any():
            return []
        n, comp, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=connectivity)
        means = None
        if self.scores is not None:  # per-component sums in one pass over the frame
            sums = np.bincount(comp.ravel(), weights=self.scores[cid].ravel(), minlength=n)
            means = sums / np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
        name = self.meta.classes[cid].name
        out = [Defect(cid, name, int(stats[i, cv2.CC_STAT_AREA]),
                      tuple(int(v) for v in stats[i, :4]),  # x, y, w, h
                      (float(centroids[i, 0]), float(centroids[i, 1])),
                      None if means is None else float(means[i]))
               for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
        return sorted(out, key=lambda d: -d.area)

    def without_small_defects(self, min_area: int) -> Segmentation:
        """This prediction with the defect regions smaller than ``min_area`` px turned into the background class
        (``meta.background_id``), so labels, overlay, RLE rows and :meth:`defects` all agree. ``self`` when none is.

        Example:
            >>> from usseg_sdk.meta import InputSpec, ModelMeta
            >>> meta = ModelMeta.uncalibrated(method="iic", n_clusters=2, input=InputSpec(
            ...     channels=1, color_order="gray", mean=(0.5,), std=(0.25,)))
            >>> labels = np.zeros((4, 6), np.uint8); labels[0, 0] = 1; labels[2:4, 2:5] = 1
            >>> [d.area for d in Segmentation(labels=labels, meta=meta).without_small_defects(2).defects()]
            [6]
        """
        small = [d for d in self.defects() if d.area < min_area] if min_area > 1 else []
        if not small:
            return self
        labels = self.labels.copy()
        for cid in {d.class_id for d in small}:
            mask = (self.labels == cid).view(np.uint8)
            _, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            tiny = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area)
            labels[np.isin(comp, tiny[tiny > 0])] = self.meta.background_id
        return replace(self, labels=labels)

    def to_rle(self, image_id: str = "frame", classes: list[int] | None = None) -> list[tuple[str, int, str]]:
        """Severstal rows ``(ImageId, ClassId, EncodedPixels)`` for the defect classes (column-major RLE).

        ``classes`` defaults to every class with ``defect=True``; see :func:`usseg_sdk.rle.label_map_to_rows`.
        """
        from usseg_sdk.rle import label_map_to_rows

        if classes is None:
            classes = [i for i, c in enumerate(self.meta.classes) if c.defect]
        return label_map_to_rows(image_id, self.labels, classes=classes)

    def overlay(self, frame: np.ndarray | None = None, alpha: float = 0.45, contours: bool = True,
                legend: bool = False, background: bool = False) -> np.ndarray:
        """A BGR uint8 picture: the frame with classes blended in their ``meta.classes`` colours.

        ``frame`` defaults to the predicted frame (grey frames are shown grey); without one the colour map alone
        is returned. Non-defect classes are left unpainted unless ``background``. ``contours`` outlines each
        defect region; ``legend`` lists the painted classes present, a colour swatch and the name each
        (:mod:`usseg_sdk.legend`): on the frame when it takes at most a tenth of it, else in a strip below the
        frame, and the picture is then taller than the frame.
        """
        frame = self.frame if frame is None else frame
        palette = np.array([c.color[::-1] for c in self.meta.classes], np.uint8)  # meta colours are RGB
        colour = palette[self.labels]  # (H, W, 3) BGR
        if frame is None:
            return colour
        base = _as_bgr(frame, self.shape)
        shown = list(range(self.meta.n_classes)) if background else self._defect_ids()
        painted = np.isin(self.labels, shown)
        out = base.copy()
        blend = cv2.addWeighted(base, 1.0 - alpha, colour, alpha, 0.0)
        out[painted] = blend[painted]
        if contours:
            for cid in self._defect_ids():
                mask = (self.labels == cid).view(np.uint8)
                found, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(out, found, -1, tuple(int(v) for v in palette[cid]), 1)
        if legend:
            present = np.flatnonzero(np.bincount(self.labels.ravel(), minlength=self.meta.n_classes))
            ids = [c for c in shown if c in set(present.tolist())]
            out = draw_legend(out, [self.meta.classes[c].name for c in ids], [tuple(palette[c]) for c in ids])
        return out

    def _defect_ids(self) -> list[int]:
        return [i for i, c in enumerate(self.meta.classes) if c.defect]

    def _class_id(self, cls: int | str) -> int:
        if isinstance(cls, str):
            names = self.meta.class_names
            if cls not in names:
                raise KeyError(f"unknown class {cls!r}; classes: {names}")
            return names.index(cls)
        if not 0 <= int(cls) < self.meta.n_classes:
            raise KeyError(f"class id {cls} out of range 0..{self.meta.n_classes - 1}")
        return int(cls)


def _as_bgr(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if frame.shape[:2] != shape:
        raise ValueError(f"overlay frame shape {frame.shape[:2]} differs from the labels {shape}")
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame.reshape(shape), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(frame[:, :, :3])
