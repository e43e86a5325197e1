"""Periodic evaluation during training: cluster confusion on the device, matching and scores in ``usseg_sdk.metrics``.

The ``"main"`` head is scored with one-to-one Hungarian matching (the papers' protocol: IIC, PiCIE); every other
head of ``Method.eval_heads()`` (over-clustering heads) with many-to-one matching. When the labelled split has
a different number of classes than the main head has clusters, one-to-one matching is impossible and the main
head is scored many-to-one too (logged once).

The baselines (``python -m training baseline``) are scored here too: :func:`score_protocols` fits the cluster ->
class mapping on the evaluated images themselves or on calibration images, :func:`evaluate_baseline` fits and
scores one.

The confusion matrix is counted here with ``torch.bincount`` on the device (not with
``usseg_sdk.metrics.ConfusionMatrix``, which is numpy) so evaluation stays on the GPU and the per-rank matrices
can be summed with one all-reduce under DDP; the skipping rule is the SDK's: pixels whose label is the ignore
index or outside ``[0, n_classes)`` do not count.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from usseg_sdk.metrics import apply_mapping, evaluate_clusters, fit_mapping, matching_mode, segmentation_scores

if TYPE_CHECKING:
    from training.methods.baselines import KMeansBaseline

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
Batch = dict[str, torch.Tensor]


def confusion_counts(pred: torch.Tensor, label: torch.Tensor, n_pred: int, n_classes: int) -> torch.Tensor:
    """int64 (n_pred, n_classes) counts of (predicted cluster, label) over valid pixels."""
    pred, label = pred.reshape(-1), label.reshape(-1)  # (N,)
    valid = (label >= 0) & (label < n_classes) & (label != IGNORE_INDEX)
    flat = pred[valid].long() * n_classes + label[valid].long()
    return torch.bincount(flat, minlength=n_pred * n_classes).reshape(n_pred, n_classes)


def pad_to_multiple(images: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to multiples of ``stride`` (reflect, as the runtime does)."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return images
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(images, (0, pw, 0, ph), mode=mode)


def _stride(method: Any) -> int:
    try:
        return int(method.input_spec().stride)
    except NotImplementedError:
        return 1


class EvaluationInterrupted(Exception):
    """``should_stop`` said stop between two batches of an evaluation; its counts are incomplete."""


@torch.no_grad()
def cluster_confusions(method: Any, loader: Iterable[dict[str, torch.Tensor]], *, device: torch.device,
                       n_classes: int, autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> dict[str, torch.Tensor]:
    """Head name -> int64 (K_head, n_classes) confusion of this process's share of the labelled split.

    ``should_stop`` is polled before every batch: an evaluation of large frames takes minutes, a stop request
    (Ctrl-C) must not wait for it (:class:`EvaluationInterrupted`)."""
    heads = method.eval_heads()
    stride = _stride(method)
    was_training = method.training
    method.eval()
    try:
        nets = {name: method.inference_net(name) for name in heads}
        counts = {name: torch.zeros(k, n_classes, dtype=torch.int64, device=device) for name, k in heads.items()}
        for batch in loader:
            if should_stop is not None and should_stop():
                raise EvaluationInterrupted
            if "label" not in batch:
                from training.errors import DataError

                raise DataError("the evaluation dataset (data.eval) returns no 'label'; it needs masks")
            images = batch["image"].to(device, non_blocking=True)  # (B, C, H, W)
            labels = batch["label"].to(device, non_blocking=True)  # (B, H, W)
            h, w = images.shape[-2:]
            padded = pad_to_multiple(images, stride)
            for name, net in nets.items():
                with autocast() if autocast is not None else contextlib.nullcontext():
                    probs = net(padded)  # (B, K, H', W')
                pred = probs[..., :h, :w].argmax(dim=1)  # (B, H, W)
                counts[name] += confusion_counts(pred, labels, heads[name], n_classes)
    finally:
        method.train(was_training)
    return counts


def score_confusions(counts: dict[str, torch.Tensor], *, class_names: list[str] | None = None,
                     warn: bool = True) -> dict[str, Any]:
    """Flat metrics: ``miou``, ``pixel_accuracy``, ``iou`` (list), ``defect_iou`` for the main head;
    ``<head>/miou`` and ``<head>/pixel_accuracy`` for the others."""
    out: dict[str, Any] = {}
    for name, matrix in counts.items():
        matrix_np = matrix.cpu().numpy()
        k, n_classes = matrix_np.shape
        mode = matching_mode(k, n_classes)
        if name == "main" and mode == "many_to_one" and warn:
            log.warning("main head has %d clusters but the labelled split %d classes: scoring it many-to-one",
                        k, n_classes)
        _, scores = evaluate_clusters(matrix_np, mode=mode, class_names=class_names)
        if name == "main":
            out.update(miou=_float(scores.miou), pixel_accuracy=_float(scores.pixel_accuracy),
                       defect_iou=_float(scores.defect_iou), iou=[_float(v) for v in scores.iou],
                       class_names=list(scores.class_names), matching=mode)
        else:
            out[f"{name}/miou"] = _float(scores.miou)
            out[f"{name}/pixel_accuracy"] = _float(scores.pixel_accuracy)
            out[f"{name}/defect_iou"] = _float(scores.defect_iou)
    out["pixels"] = int(next(iter(counts.values())).sum().item()) if counts else 0
    return out


def best_metric_name(wanted: str, heads: Mapping[str, int], n_classes: int) -> str:
    """The score ``checkpoints/best`` is chosen by (``train.best_metric``). ``auto``: the main head's mIoU when it
    is matched one-to-one (as many classes as clusters or more); when the labelled split has fewer classes (a
    binary line: 2 classes, K = 4) its many-to-one mIoU hardly moves (every cluster maps to the background), so
    the over-clustering head's mIoU, or without one the main head's defect IoU."""
    names = ["miou", "pixel_accuracy", "defect_iou"]
    names += [f"{head}/{score}" for head in heads if head != "main" for score in ("miou", "pixel_accuracy",
                                                                                  "defect_iou")]
    if wanted != "auto":
        if wanted not in names:
            from training.errors import ConfigError

            raise ConfigError(f"train.best_metric {wanted!r} is not a score of this method; valid: auto, "
                              f"{', '.join(names)}")
        return wanted
    if matching_mode(heads["main"], n_classes) == "hungarian":
        return "miou"
    return "over/miou" if "over" in heads else "defect_iou"


def _float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value  # JSON has no NaN: a class absent from gt and pred is null


# -- baselines: fitted once, scored with a mapping fitted on the same or on calibration images ------------------
def evaluate_baseline(method: KMeansBaseline, fit_loader: Iterable[Batch], eval_loader: Iterable[Batch], *,
                      class_names: Sequence[str] | None, calibration_loader: Iterable[Batch] | None = None,
                      device: torch.device | str = "cpu") -> dict[str, Any]:
    """Fit ``method`` on ``fit_loader``'s images, score it on ``eval_loader`` (and calibration -> eval); loaders
    yield ``{"image": (B, C, H, W), "label": (B, H, W)}`` batches (labels only needed for the scored ones).

    Returns ``{"heads": score_protocols(...), "kmeans_loss", "fit_pixels", "eval_pixels", "seconds"}``."""
    device = torch.device(device)
    method.to(device)
    n_classes = len(class_names) if class_names else method.eval_heads()["main"]
    start = time.perf_counter()
    kmeans_loss = method.fit_centroids(fit_loader)
    fitted = time.perf_counter()
    eval_counts = cluster_confusions(method, eval_loader, device=device, n_classes=n_classes)
    calib_counts = None
    if calibration_loader is not None:
        calib_counts = cluster_confusions(method, calibration_loader, device=device, n_classes=n_classes)
    done = time.perf_counter()
    return {"heads": score_protocols(eval_counts, class_names, calib_counts),
            "kmeans_loss": kmeans_loss, "fit_pixels": int(method.fit_points),
            "eval_pixels": int(next(iter(eval_counts.values())).sum()),
            "seconds": {"fit": round(fitted - start, 2), "eval": round(done - fitted, 2)}}


def score_protocols(eval_counts: Mapping[str, Any], class_names: Sequence[str] | None = None,
                    calibration_counts: Mapping[str, Any] | None = None, background: int | None = 0
                    ) -> dict[str, dict[str, Any]]:
    """Head -> {"k", "matching", "same_images": scores, "calibration": scores (when calibration counts are given)}.

    ``eval_counts`` / ``calibration_counts``: head -> (K, n_classes) cluster confusion ``[cluster, class]`` (torch or
    numpy). Scores are ``SegmentationScores.to_dict()`` plus the ``mapping`` (cluster -> class) that produced them.
    """
    out: dict[str, dict[str, Any]] = {}
    for head, counts in eval_counts.items():
        matrix = _numpy(counts)  # (K, n_classes)
        k, n_classes = matrix.shape
        mode = matching_mode(k, n_classes)
        own = fit_mapping(matrix, mode)[0]
        entry: dict[str, Any] = {"k": k, "matching": mode,
                                 "same_images": _mapped_scores(matrix, own, class_names, background)}
        if calibration_counts is not None:
            calib = _numpy(calibration_counts[head])
            entry["calibration"] = _mapped_scores(matrix, fit_mapping(calib, mode)[0], class_names, background)
        out[head] = entry
    return out


def _mapped_scores(matrix: np.ndarray, mapping: np.ndarray, class_names: Sequence[str] | None,
                   background: int | None) -> dict[str, Any]:
    scores = segmentation_scores(apply_mapping(matrix, mapping), class_names, background=background)
    return {**scores.to_dict(), "mapping": [int(c) for c in mapping]}


def _numpy(counts: Any) -> np.ndarray:
    return counts.cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)
