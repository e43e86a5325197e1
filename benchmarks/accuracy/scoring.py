"""Scoring: cluster confusions -> the three protocols, for every head of a trained method or baseline.

(a) main head, when its k is the class count (4 on NEU-Seg), Hungarian one-to-one mapping fitted on the eval
    images themselves (IIC's protocol);
(b) the over-clustering head where the model has one (else the main head), mapping fitted on the calibration
    images and applied to the eval images (how a line names clusters from a few labelled frames);
(c) the head of (b), the many-to-one mapping chosen to maximise the calibration images' mIoU.
Which matching a head gets is ``usseg_sdk.metrics.matching_mode``'s decision, the same as training's and
``usseg calibrate``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from training.evaluation import cluster_confusions
from usseg_sdk.metrics import apply_mapping, fit_mapping, matching_mode, segmentation_scores

MAPPING_SOURCE = {"a": "same_images", "b": "calibration", "c": "calibration_miou_fit"}  # protocol -> heads key


def score_heads(eval_counts: dict[str, Any], calibration_counts: dict[str, Any], class_names: Sequence[str],
                background: int = 0) -> dict[str, dict[str, Any]]:
    """Head -> {"k", "matching", "same_images": scores, "calibration": scores}: the mapping fitted on the eval
    images themselves, or on the calibration images and applied to the eval images (``usseg_sdk.metrics.
    matching_mode``: Hungarian one-to-one when the head has at most as many clusters as classes, else many-to-one);
    ``calibration_miou_fit``: the mIoU-fitted many-to-one mapping of the calibration images (protocol (c))."""
    out = {}
    for head, counts in eval_counts.items():
        matrix = as_numpy(counts)  # (K, n_classes) [cluster, class]
        k, n_classes = matrix.shape
        mode = matching_mode(k, n_classes)
        calib = as_numpy(calibration_counts[head])
        mapped = {source: _mapped(matrix, fit_mapping(fit_on, how)[0], class_names, background)
                  for source, fit_on, how in (("same_images", matrix, mode), ("calibration", calib, mode),
                                              ("calibration_miou_fit", calib, "miou"))}
        out[head] = {"k": k, "matching": mode, **mapped}
    return out


def _mapped(matrix: np.ndarray, mapping: np.ndarray, class_names: Sequence[str], background: int
            ) -> dict[str, Any]:
    scores = segmentation_scores(apply_mapping(matrix, mapping), class_names, background=background)
    return {**scores.to_dict(), "mapping": [int(c) for c in mapping]}


def as_numpy(counts: Any) -> np.ndarray:
    return counts.cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)


def protocols(heads: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """(a) main head, Hungarian on the eval images (None when its K is not the class count); (b) the "over" head
    (else the main head), mapping fitted on calibration, many-to-one (Hungarian when K <= classes)."""
    main = heads["main"]
    n_classes = len(main["same_images"]["per_class"])  # the classes the heads were scored against
    a = _summary(main["same_images"], "main", main["k"], "hungarian/eval") if main["k"] == n_classes else None
    head = "over" if "over" in heads else "main"
    entry = heads[head]
    b = _summary(entry["calibration"], head, entry["k"], f"{entry['matching']}/calibration")
    c = _summary(entry["calibration_miou_fit"], head, entry["k"], "miou-fit/calibration")
    return {"a": a, "b": b, "c": c}


def _summary(scores: dict[str, Any], head: str, k: int, mapping: str) -> dict[str, Any]:
    return {"head": head, "k": k, "mapping": mapping, "pixel_accuracy": scores["pixel_accuracy"],
            "miou": scores["miou"], "defect_iou": scores["defect_iou"],
            "iou": {name: v["iou"] for name, v in scores["per_class"].items()}}


def score_method(method: Any, loaders: dict[str, DataLoader], device: str, class_names: Sequence[str],
                 background: int = 0) -> dict[str, Any]:
    """Cluster confusions of every head on the eval parts and calibration -> scores of the whole eval set
    (``heads``, ``protocols``) and, when the eval set has a part tuning never looked at, of that part alone."""
    method.eval()
    counts = {name: cluster_confusions(method, loader, device=torch.device(device), n_classes=len(class_names))
              for name, loader in loaders.items()}
    parts = [counts[name] for name in ("eval_tuning", "eval_untouched") if name in counts]
    whole = {head: sum(part[head] for part in parts) for head in parts[0]}
    heads = score_heads(whole, counts["calibration"], class_names, background)
    raw = {"eval": whole, **{name: c for name, c in counts.items() if name in ("calibration", "eval_untouched")}}
    out: dict[str, Any] = {"heads": heads, "protocols": protocols(heads),
                           "confusions": {name: {head: as_numpy(m).tolist() for head, m in c.items()}
                                          for name, c in raw.items()}}
    if "eval_untouched" in counts and "eval_tuning" in counts:
        untouched = score_heads(counts["eval_untouched"], counts["calibration"], class_names, background)
        out["untouched"] = {"images": len(loaders["eval_untouched"].dataset), "heads": untouched,
                            "protocols": protocols(untouched)}
    return out


@torch.no_grad()
def predict_frames(method: Any, frames: DataLoader, heads: dict[str, dict[str, Any]], device: str
                   ) -> dict[str, np.ndarray]:
    """Class maps (uint8 (N, H, W)) of the overlay frames (all of one size) under every protocol that applies."""
    images = torch.cat([b["image"] for b in frames]).to(device)  # (N, C, H, W)
    return class_maps(method, images, heads)


@torch.no_grad()
def class_maps(method: Any, images: torch.Tensor, heads: dict[str, dict[str, Any]],
               names: Sequence[str] = ("a", "b", "c")) -> dict[str, np.ndarray]:
    """Protocol -> class map (uint8 (N, H, W)) of ``images`` (N, C, H, W) on the method's device: the argmax of the
    protocol's head mapped by the mapping ``heads`` (a run's scored heads) holds for it (``MAPPING_SOURCE``).
    Protocols in ``names`` that do not apply (``protocols`` gives None) are left out. ``method`` in eval mode."""
    from training.evaluation import pad_to_multiple

    stride = int(method.input_spec().stride)
    h, w = images.shape[-2:]
    out = {}
    plan = protocols(heads)
    for name, proto in plan.items():
        if proto is None or name not in names:
            continue
        entry = heads[proto["head"]]
        mapping = np.asarray(entry[MAPPING_SOURCE[name]]["mapping"], dtype=np.uint8)
        probs = method.inference_net(proto["head"])(pad_to_multiple(images, stride))  # (N, K, H', W')
        clusters = probs[..., :h, :w].argmax(dim=1).cpu().numpy()
        out[name] = mapping[clusters]
    return out
