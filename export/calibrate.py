"""``--calibrate IMAGES MASKS``: name the clusters at export time from a few labelled frames.

The same fit as ``usseg calibrate`` (``usseg_sdk.calibrate``, which uses ``usseg_sdk.metrics``): the freshly
exported graph (identity mapping) runs on the frames through ``Segmenter``, a [cluster, class] confusion matrix
is matched by ``usseg_sdk.metrics.fit_mapping`` (auto: one-to-one Hungarian for ``K <= classes``, many-to-one for
``K > classes``, e.g. an over-clustering head; or ``miou``), and the mapping goes into the metadata and into the
graph's two initializers (:func:`set_mapping`). Class names come from ``--class-names``, else ``labels.txt`` beside
the masks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from export.errors import ExportError
from export.onnx_export import one_hot
from usseg_sdk.calibrate import Calibration, calibrated_meta, class_names_for, find_pairs, fit, max_label
from usseg_sdk.config import SegmenterConfig
from usseg_sdk.meta import MAPPING_INITIALIZER, SCORES_INITIALIZER, ModelMeta
from usseg_sdk.metrics import MAPPING_MODES
from usseg_sdk.segmenter import Segmenter

log = logging.getLogger(__name__)

MODES = ("auto", *MAPPING_MODES)


@dataclass(frozen=True)
class CalibrationOptions:
    images: Path
    masks: Path
    mode: str = "auto"  # auto: hungarian when K <= classes, else many_to_one (usseg_sdk.metrics.matching_mode)
    class_names: str | None = None  # "a,b,c", class 0 first
    labels_file: Path | None = None
    background: int | None = 0  # class that is not a defect
    ignore_index: int = 255


@dataclass
class CalibrationResult:
    meta: ModelMeta
    calibration: Calibration

    def report(self) -> dict[str, Any]:
        cal = self.calibration
        return {"mode": cal.mode, "n_images": cal.n_images, "mapping": cal.mapping.tolist(),
                "cluster_confusion": cal.confusion.tolist(), "scores": cal.scores.to_dict()}


def calibrate(model_path: Path, options: CalibrationOptions) -> CalibrationResult:
    """Fit the cluster-to-class mapping of the model at ``model_path`` on the labelled frames."""
    if options.mode not in MODES:
        raise ExportError(f"calibration mode must be one of {MODES}, got {options.mode!r}")
    seg = Segmenter(model_path, config=SegmenterConfig(device="cpu", tiling=False, clusters=True, scores=False))
    try:
        pairs = find_pairs(options.images, options.masks)
        names = class_names_for(options.class_names, options.labels_file, options.masks)
        n_classes = len(names) if names else max_label(pairs, options.ignore_index) + 1
        names = names or [f"class_{i}" for i in range(n_classes)]
        cal = fit(seg, pairs, n_classes, options.mode, options.ignore_index, names, options.background)
        meta = calibrated_meta(seg.meta, cal, names, options.background, str(options.images), labels_in_graph=True)
    finally:
        seg.close()
    return CalibrationResult(meta, cal)


def set_mapping(model: onnx.ModelProto, meta: ModelMeta) -> onnx.ModelProto:
    """Write ``meta.cluster_to_class`` into the graph's ``usseg_cluster_to_class`` and, when the graph has
    scores, ``usseg_class_from_cluster`` (one-hot, (n_classes, K)) and the scores output's class axis."""
    mapping = np.asarray(meta.cluster_to_class, np.int64)
    found = set()
    for init in model.graph.initializer:
        if init.name == MAPPING_INITIALIZER:
            init.CopyFrom(numpy_helper.from_array(mapping, MAPPING_INITIALIZER))
            found.add(init.name)
        elif init.name == SCORES_INITIALIZER:
            init.CopyFrom(numpy_helper.from_array(one_hot(mapping, meta.n_classes), SCORES_INITIALIZER))
            found.add(init.name)
    if MAPPING_INITIALIZER not in found:
        raise ExportError(f"the graph has no {MAPPING_INITIALIZER!r} initializer")
    for out in model.graph.output:
        if out.name == meta.outputs.scores:
            dims = out.type.tensor_type.shape.dim
            if len(dims) == 4:
                dims[1].dim_value = meta.n_classes
    return model


def print_calibration(result: CalibrationResult) -> None:
    """The calibration metrics, for the CLI."""
    cal, names = result.calibration, result.meta.class_names
    s = cal.scores
    print(f"calibrated on {cal.n_images} images ({cal.mode}); cluster -> class: "
          + ", ".join(f"{k}->{names[c]}" for k, c in enumerate(cal.mapping)))
    print(f"  pixel accuracy {s.pixel_accuracy:.4f}  mIoU {s.miou:.4f}  defect IoU {s.defect_iou:.4f}  "
          f"defect F1 {s.defect_f1:.4f}")
    for name, iou, f1 in zip(names, s.iou, s.f1, strict=True):
        print(f"    {name:<20} IoU {iou:.4f}  F1 {f1:.4f}")
