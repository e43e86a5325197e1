"""Stage 3: the customer path — ``usseg_sdk.Segmenter`` on the held-back frames (no torch), files and scores.

Writes into the output folder::

    predictions/<id>.png   uint8 class ids, the size of the frame (0 background, 1.. defects, labels.txt order)
    predictions.csv        Severstal rows ImageId,ClassId,EncodedPixels (``Segmentation.to_rle``)
    defects.jsonl          one line a frame: its defect regions (``Segmentation.defects()``) and class areas
    metrics.json           pixel accuracy, mIoU, per-class IoU, defect IoU against the sample's masks

Nothing here imports torch, training or export: it is what an inspection line runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from demo.sample import Sample
from demo.settings import DemoError
from usseg_sdk import Segmenter
from usseg_sdk.atomic import write_text_atomic
from usseg_sdk.config import SegmenterConfig
from usseg_sdk.metrics import ConfusionMatrix, SegmentationScores, segmentation_scores
from usseg_sdk.result import Segmentation
from usseg_sdk.rle import write_csv

MIN_AREA = 20  # pixels: smaller regions are not listed in defects.jsonl (single-pixel speckle)


@dataclass
class HoldoutResult:
    ids: list[str]
    frames: list[np.ndarray]  # BGR uint8 (H, W, 3)
    masks: list[np.ndarray]  # ground truth class ids (H, W)
    predictions: list[Segmentation]
    scores: SegmentationScores
    all_background: SegmentationScores  # the reference that predicts background everywhere (finds no defect)
    # id -> {"pixel_accuracy", "miou", "defect_iou", "defects": regions found, "true_defects": {class: IoU}}
    per_frame: dict[str, dict[str, Any]]
    predict_s: float  # seconds in Segmenter.predict over the frames


def predict_holdout(model_dir: Path, sample: Sample) -> HoldoutResult:
    """Run the exported model on every holdout frame and score it against the masks."""
    n = len(sample.class_names)
    ids = sample.splits["holdout"]
    frames = [sample.frame(i) for i in ids]
    masks = [sample.mask(i) for i in ids]
    with Segmenter(model_dir, config=SegmenterConfig(device="cpu")) as seg:
        if seg.meta.n_classes != n:
            raise DemoError(f"{model_dir}: the model names {seg.meta.n_classes} classes, the sample {n}")
        seg.warmup(shape=frames[0].shape[:2])
        start = time.perf_counter()
        predictions = [seg.predict(f) for f in frames]
        predict_s = time.perf_counter() - start
    total, per_frame = _score_frames(ids, predictions, masks, sample.class_names)
    scores = segmentation_scores(total, sample.class_names)
    nothing = np.zeros_like(total)
    nothing[0] = total.sum(axis=0)  # every pixel predicted background
    return HoldoutResult(ids, frames, masks, predictions, scores, segmentation_scores(nothing, sample.class_names),
                         per_frame, predict_s)


def _score_frames(ids: list[str], predictions: list[Segmentation], masks: list[np.ndarray], names: list[str]
                  ) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
    """The class confusion [pred, gt] of all frames, and each frame's scores."""
    n = len(names)
    total = ConfusionMatrix(n, n)
    per_frame = {}
    for ident, pred, mask in zip(ids, predictions, masks, strict=True):
        frame_cm = ConfusionMatrix(n, n).update(pred.labels, mask)
        total.merge(frame_cm)
        s = segmentation_scores(frame_cm.matrix, names)
        present = [c for c in range(1, n) if (mask == c).any()]  # the frame's true defect classes
        per_frame[ident] = {"pixel_accuracy": _num(s.pixel_accuracy), "miou": _num(s.miou),
                            "defect_iou": _num(s.defect_iou), "defects": len(pred.defects(min_area=MIN_AREA)),
                            "true_defects": {names[c]: _num(s.iou[c]) for c in present}}
    return total.matrix.copy(), per_frame


def write_holdout(result: HoldoutResult, out: Path, extra_metrics: dict[str, Any]) -> dict[str, Path]:
    """predictions/, predictions.csv, defects.jsonl, metrics.json; returns their paths by name."""
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    rows, lines = [], []
    for ident, pred in zip(result.ids, result.predictions, strict=True):
        if not cv2.imwrite(str(pred_dir / f"{ident}.png"), pred.labels):
            raise DemoError(f"cannot write {pred_dir / f'{ident}.png'}")
        rows.extend(pred.to_rle(image_id=ident))
        defects = [d.to_dict() for d in pred.defects(min_area=MIN_AREA)]
        lines.append(json.dumps({"image_id": ident, "shape": list(pred.shape), "class_areas": pred.class_areas(),
                                 "defects": defects}))
    paths = {"predictions": pred_dir, "csv": out / "predictions.csv", "defects": out / "defects.jsonl",
             "metrics": out / "metrics.json"}
    write_csv(paths["csv"], rows)
    write_text_atomic(paths["defects"], "\n".join(lines) + "\n")
    metrics = {"split": "holdout", "images": result.ids, **result.scores.to_dict(), "per_image": result.per_frame,
               **extra_metrics, "reference_all_background": _headline(result.all_background.to_dict())}
    write_text_atomic(paths["metrics"], json.dumps(metrics, indent=2) + "\n")
    return paths


def _headline(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: scores[k] for k in ("pixel_accuracy", "miou", "defect_iou", "per_class")}


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
