"""`make demo`: the end-to-end demo on the bundled NEU-Seg sample.

Stage 0 (foundation): a per-pixel intensity k-means on the held-back sample frames, scored against their masks
with Hungarian matching, and an overlay PNG per frame. Later stages train, export and predict through usseg_sdk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "neu-seg"
OUT = ROOT / "demo_out"


def main() -> int:
    split = json.loads((SAMPLE / "splits.json").read_text())
    names = (SAMPLE / "labels.txt").read_text().split()
    OUT.mkdir(exist_ok=True)
    frames = [cv2.imread(str(SAMPLE / "images" / f"{i}.jpg"), cv2.IMREAD_GRAYSCALE) for i in split["holdout"]]
    masks = [cv2.imread(str(SAMPLE / "masks" / f"{i}.png"), cv2.IMREAD_UNCHANGED) for i in split["holdout"]]
    pixels = np.concatenate([f.reshape(-1, 1) for f in frames]).astype(np.float64)
    _, clusters = kmeans2(pixels, len(names), seed=0, minit="++")
    gt = np.concatenate([m.ravel() for m in masks])
    hist = np.zeros((len(names), len(names)), np.int64)
    np.add.at(hist, (clusters, gt), 1)
    rows, cols = linear_sum_assignment(-hist)
    mapping = dict(zip(rows, cols, strict=True))
    pred = np.vectorize(mapping.get)(clusters)
    ious = [float(((pred == c) & (gt == c)).sum() / max(1, ((pred == c) | (gt == c)).sum())) for c in range(len(names))]
    palette = np.array([[40, 40, 40], [75, 25, 230], [75, 180, 60], [25, 225, 255]], np.uint8)  # BGR
    start = 0
    for ident, frame in zip(split["holdout"], frames, strict=True):
        lab = pred[start:start + frame.size].reshape(frame.shape)
        start += frame.size
        overlay = cv2.addWeighted(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), 0.55, palette[lab], 0.45, 0)
        cv2.imwrite(str(OUT / f"{ident}_overlay.png"), overlay)
    metrics = {"method": "intensity-kmeans", "pixel_accuracy": float((pred == gt).mean()),
               "miou": float(np.mean(ious)), "iou": dict(zip(names, ious, strict=True))}
    (OUT / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    print(f"overlays and metrics in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
