"""Periodic evaluation during training: cluster confusion on the device, matching and scores in ``usseg_sdk.metrics``.

The ``"main"`` head is scored with one-to-one Hungarian matching (the papers' protocol: IIC, PiCIE); every other
head of ``Method.eval_heads()`` (over-clustering heads) with many-to-one matching. When the labelled split has
a different number of classes than the main head has clusters, one-to-one matching is impossible and the main
head is scored many-to-one too (logged once).

The confusion matrix is counted here with ``torch.bincount`` on the device (not with
``usseg_sdk.metrics.ConfusionMatrix``, which is numpy) so evaluation stays on the GPU and the per-rank matrices
can be summed with one all-reduce under DDP; the skipping rule is the SDK's: pixels whose label is the ignore
index or outside ``[0, n_classes)`` do not count.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

IGNORE_INDEX = 255


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


@torch.no_grad()
def cluster_confusions(method: Any, loader: Iterable[dict[str, torch.Tensor]], *, device: torch.device,
                       n_classes: int, autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                       ) -> dict[str, torch.Tensor]:
    """Head name -> int64 (K_head, n_classes) confusion of this process's share of the labelled split."""
    heads = method.eval_heads()
    stride = _stride(method)
    was_training = method.training
    method.eval()
    try:
        nets = {name: method.inference_net(name) for name in heads}
        counts = {name: torch.zeros(k, n_classes, dtype=torch.int64, device=device) for name, k in heads.items()}
        for batch in loader:
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
    from usseg_sdk.metrics import evaluate_clusters, matching_mode

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
    out["pixels"] = int(next(iter(counts.values())).sum().item()) if counts else 0
    return out


def _float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value  # JSON has no NaN: a class absent from gt and pred is null
