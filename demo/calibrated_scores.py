"""Torch-side scores of a method's heads on the sample: mapping fitted on ``calibration``, scored on ``holdout``.

The protocol of the demo's exported model (``python -m export --calibrate`` then ``Segmenter`` on the holdout),
computed in torch with the engine's evaluation (:func:`training.evaluation.cluster_confusions`) and the
baselines' scoring (:func:`training.evaluation.score_protocols`): used for the k-means baseline row and by
``demo/compare_methods.py``, which compares every head of every method without exporting each.
"""

from __future__ import annotations

from typing import Any

import torch

from demo.sample import Sample
from training.data import build_dataset
from training.evaluation import cluster_confusions, evaluate_baseline, score_protocols
from training.loaders import image_loader
from training.methods.base import Method, build_method


def split_loader(sample: Sample, split: str, channels: int, *, labelled: bool = True) -> Any:
    spec = {"kind": "mask_folder", "root": str(sample.root), "split": split, "channels": channels,
            "class_names": sample.class_names, "masks_dir": "masks" if labelled else None, "crop": None}
    return image_loader(build_dataset(spec, train=not labelled), batch_size=8)


def head_scores(method: Method, sample: Sample, channels: int) -> dict[str, dict[str, Any]]:
    """Head -> {"k", "matching", "same_images", "calibration"} (``score_protocols``): ``calibration`` is the mapping
    fitted on the calibration frames applied to the holdout frames, ``same_images`` fitted on the holdout itself."""
    n = len(sample.class_names)
    device = torch.device("cpu")
    holdout = cluster_confusions(method, split_loader(sample, "holdout", channels), device=device, n_classes=n)
    calib = cluster_confusions(method, split_loader(sample, "calibration", channels), device=device, n_classes=n)
    return score_protocols(holdout, sample.class_names, calib)


def kmeans_baseline(sample: Sample, channels: int = 1, seed: int = 0) -> dict[str, Any]:
    """Per-pixel k-means (K = classes) fitted on the ``train`` images, named on ``calibration``, scored on
    ``holdout``: ``training.evaluation.evaluate_baseline``'s result."""
    method = build_method("kmeans", {"n_clusters": len(sample.class_names), "channels": channels, "seed": seed})
    return evaluate_baseline(method, split_loader(sample, "train", channels, labelled=False),
                             split_loader(sample, "holdout", channels), class_names=sample.class_names,
                             calibration_loader=split_loader(sample, "calibration", channels))
