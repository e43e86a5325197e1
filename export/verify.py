"""Verification of an exported model through the customer's code path: ``usseg_sdk.Segmenter`` on onnxruntime CPU.

For every verification frame (``--verify-images``, default the bundled ``samples/neu-seg``):

* ``Segmenter.predict(frame)`` gives the deployed labels/clusters/scores (reading the frame exactly as a line
  does: channel conversion, stride padding, cropping back);
* the torch reference (the method's *un-rewritten* inference net, float32) runs on the exact uint8 tensor the
  Segmenter feeds the graph (``Segmenter.preprocess``), so any difference comes from the export;
* a second session on a copy of the model that also outputs the internal probabilities gives their max abs
  difference (the ``scores`` output is compared too when the model has one).

Numbers written to ``verify.json`` (see :func:`verify_model`): ``max_abs_diff_probs``, ``max_abs_diff_scores``,
``label_agreement`` / ``cluster_agreement`` (fraction of pixels equal to the reference), ``clusters_used``
(distinct reference clusters seen; 1 means a collapsed model, whose labels agree trivially) and
``reference_probs_std`` (spread of the reference probabilities: ~0 means the comparison checks nothing), and on
labelled frames
``miou_reference``, ``miou_model``, ``miou_drop``. A dynamic model is also checked on a batch of two and on a
second frame size. Thresholds per precision are :data:`DEFAULT_THRESHOLDS`; failing one raises
:class:`~export.errors.VerificationError` carrying the report.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import torch
from onnx import helper

from export.errors import ExportError, VerificationError
from export.onnx_export import PROBS_NAME, TAIL_PREFIX
from usseg_sdk.config import SegmenterConfig
from usseg_sdk.meta import ModelMeta
from usseg_sdk.metrics import ConfusionMatrix, apply_mapping, fit_mapping, segmentation_scores
from usseg_sdk.segmenter import Segmenter
from usseg_sdk.sources import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

Reference = Callable[[torch.Tensor], torch.Tensor]  # uint8 (B, C, H, W) -> probabilities float32 (B, K, H, W)


@dataclass(frozen=True)
class Thresholds:
    max_abs_diff: float | None  # probabilities and scores vs the torch reference
    min_agreement: float  # fraction of pixels whose label equals the reference's
    max_miou_drop: float | None  # reference mIoU - model mIoU on labelled frames


DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(max_abs_diff=1e-4, min_agreement=0.999, max_miou_drop=None),
    "fp16": Thresholds(max_abs_diff=None, min_agreement=0.99, max_miou_drop=0.01),
    "int8": Thresholds(max_abs_diff=None, min_agreement=0.95, max_miou_drop=0.02),
}


@dataclass
class LabelledFrame:
    name: str
    frame: np.ndarray  # (H, W) or (H, W, C) uint8, BGR as cv2 reads it
    mask: np.ndarray | None = None  # (H, W) class ids, 255 = ignore


@dataclass
class _Tally:
    pixels: int = 0
    same_labels: int = 0
    same_clusters: int = 0
    max_diff_probs: float = 0.0
    max_diff_scores: float | None = None
    shapes: list[list[int]] = field(default_factory=list)
    clusters_used: set[int] = field(default_factory=set)  # reference argmax values seen (1 = degenerate model)
    probs_sum: float = 0.0  # sums of the reference probabilities and their squares, for their std
    probs_sq: float = 0.0
    probs_n: int = 0


# -- frames ------------------------------------------------------------------------------------------------------
def load_frames(images: Path, masks: Path | None = None, *, count: int | None = None,
                channels: int = 1) -> list[LabelledFrame]:
    """The first ``count`` images of a folder (sorted by name), with their masks (same stem) when given."""
    if not images.is_dir():
        raise ExportError(f"image folder {images} does not exist")
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ExportError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    mask_by_stem = {}
    if masks is not None:
        if not masks.is_dir():
            raise ExportError(f"mask folder {masks} does not exist")
        mask_by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        paths = [p for p in paths if p.stem in mask_by_stem] or paths
    flags = cv2.IMREAD_UNCHANGED if channels == 4 else cv2.IMREAD_COLOR
    frames = []
    for path in paths[:count]:
        frame = cv2.imread(str(path), flags)
        if frame is None or frame.dtype != np.uint8:
            raise ExportError(f"cannot read {path} as an 8-bit image")
        mask = None
        if path.stem in mask_by_stem:
            mask = cv2.imread(str(mask_by_stem[path.stem]), cv2.IMREAD_GRAYSCALE)
            if mask is None or mask.shape != frame.shape[:2]:
                raise ExportError(f"mask {mask_by_stem[path.stem]} is unreadable or not {frame.shape[:2]} like "
                                  f"its image {path}")
        frames.append(LabelledFrame(path.stem, frame, mask))
    return frames


def fit_frame(item: LabelledFrame, static_hw: tuple[int, int] | None) -> LabelledFrame:
    """Crop (top-left) a frame larger than a static graph input, so it is run whole, never tiled."""
    if static_hw is None:
        return item
    h, w = min(item.frame.shape[0], static_hw[0]), min(item.frame.shape[1], static_hw[1])
    mask = None if item.mask is None else item.mask[:h, :w]
    return LabelledFrame(item.name, np.ascontiguousarray(item.frame[:h, :w]), mask)


# -- the check ---------------------------------------------------------------------------------------------------
def verify_model(model_path: Path, reference: Reference, frames: list[LabelledFrame], *,
                 thresholds: Thresholds, n_gt_classes: int | None = None, raise_on_failure: bool = True
                 ) -> dict[str, Any]:
    """Run the checks of the module docstring; returns the report (``passed`` and ``failures`` included)."""
    start = time.perf_counter()
    config = SegmenterConfig(device="cpu", tiling=False, clusters=True, scores=True)
    seg = Segmenter(model_path, config=config)
    meta = seg.meta
    static_hw = _static_hw(seg)
    frames = [fit_frame(f, static_hw) for f in frames]
    with tempfile.TemporaryDirectory(prefix="usseg-verify-") as tmp:
        probe = Segmenter(with_probs_output(model_path, Path(tmp)), config=config)
        tally, ref_cm, model_cm = _run_frames(seg, probe, reference, frames, meta, n_gt_classes)
        if static_hw is None:
            _check_dynamic(seg, probe, reference, frames, meta, tally)
        probe.close()
    seg.close()
    report = _report(model_path, meta, frames, tally, ref_cm, model_cm, thresholds)
    report["seconds"] = round(time.perf_counter() - start, 2)
    if raise_on_failure and not report["passed"]:
        raise VerificationError(f"verification of {model_path} failed: " + "; ".join(report["failures"]), report)
    return report


def _static_hw(seg: Segmenter) -> tuple[int, int] | None:
    shape = seg.backend.inputs[0].shape
    if shape is None or shape[2] is None or shape[3] is None:
        return None
    return (shape[2], shape[3])


def with_probs_output(model_path: Path, folder: Path) -> Path:
    """A copy of the model whose internal probabilities are an extra output (for the numeric comparison).

    A graph without ``scores`` whose probabilities are a softmax of logits has no softmax (the ArgMax reads the
    logits, see :mod:`export.onnx_export`): the probe gets a Softmax over clusters of the ArgMax's input."""
    model = onnx.load(str(model_path))
    if not any(PROBS_NAME in n.output for n in model.graph.node):
        argmax = next((n for n in model.graph.node if n.name == TAIL_PREFIX + "argmax"), None)
        if argmax is None or argmax.input[0] == PROBS_NAME:
            raise ExportError(f"{model_path} has no internal tensor {PROBS_NAME!r}: not a graph from this exporter")
        model.graph.node.append(helper.make_node("Softmax", [argmax.input[0]], [PROBS_NAME],
                                                 name=TAIL_PREFIX + "probe_softmax", axis=1))
    model.graph.output.append(helper.make_tensor_value_info(PROBS_NAME, onnx.TensorProto.UNDEFINED, None))
    _fix_probs_type(model)
    path = folder / "probe.onnx"
    onnx.save(model, str(path))
    return path


def _fix_probs_type(model: onnx.ModelProto) -> None:
    """The probabilities' element type (float, or float16 in an fp16 graph) from the model's value_info."""
    known = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    elem = known.get(PROBS_NAME)
    if elem is None:
        inferred = onnx.shape_inference.infer_shapes(model)
        elem = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}.get(
            PROBS_NAME, onnx.TensorProto.FLOAT)
    model.graph.output[-1].type.tensor_type.elem_type = elem


def _run_frames(seg: Segmenter, probe: Segmenter, reference: Reference, frames: list[LabelledFrame],
                meta: ModelMeta, n_gt: int | None) -> tuple[_Tally, ConfusionMatrix | None, ConfusionMatrix | None]:
    tally = _Tally()
    labelled = [f for f in frames if f.mask is not None]
    if labelled and n_gt is None:
        n_gt = max(int(f.mask[f.mask != 255].max(initial=0)) for f in labelled) + 1
    ref_cm = ConfusionMatrix(meta.n_clusters, n_gt) if labelled else None
    model_cm = ConfusionMatrix(meta.n_clusters, n_gt) if labelled else None
    for item in frames:
        result = seg.predict(item.frame)
        ref_clusters = _compare(seg, probe, reference, [item.frame], [result], meta, tally)[0]
        if item.mask is not None and ref_cm is not None and model_cm is not None:
            ref_cm.update(ref_clusters, item.mask)
            model_cm.update(result.clusters, item.mask)
    return tally, ref_cm, model_cm


def _compare(seg: Segmenter, probe: Segmenter, reference: Reference, frames: list[np.ndarray], results: list,
             meta: ModelMeta, tally: _Tally) -> list[np.ndarray]:
    """Reference vs model on one batch of same-size frames; returns the reference cluster maps."""
    batch = seg.preprocess(frames)  # (B, C, Hp, Wp) uint8, exactly what predict fed the graph
    with torch.no_grad():
        probs = reference(torch.from_numpy(batch)).float().numpy()  # (B, K, Hp, Wp)
    onnx_probs = probe.backend.run({seg.input_name: batch}, [PROBS_NAME])[PROBS_NAME].astype(np.float32)
    tally.max_diff_probs = max(tally.max_diff_probs, float(np.abs(onnx_probs - probs).max()))
    tally.shapes.append(list(batch.shape))
    mapping = np.asarray(meta.cluster_to_class)
    out = []
    for i, result in enumerate(results):
        h, w = result.labels.shape
        p = probs[i, :, :h, :w]
        clusters = p.argmax(axis=0)
        tally.clusters_used.update(np.unique(clusters).tolist())
        tally.probs_sum += float(p.sum(dtype=np.float64))
        tally.probs_sq += float(np.square(p, dtype=np.float64).sum())
        tally.probs_n += p.size
        tally.pixels += h * w
        tally.same_labels += int((mapping[clusters] == result.labels).sum())
        tally.same_clusters += int((clusters == result.clusters).sum())
        if result.scores is not None:
            onehot = np.zeros((meta.n_classes, meta.n_clusters), np.float32)
            onehot[mapping, np.arange(meta.n_clusters)] = 1.0
            diff = float(np.abs(np.einsum("ck,khw->chw", onehot, p) - result.scores).max())
            tally.max_diff_scores = max(tally.max_diff_scores or 0.0, diff)
        out.append(clusters)
    return out


def _check_dynamic(seg: Segmenter, probe: Segmenter, reference: Reference, frames: list[LabelledFrame],
                   meta: ModelMeta, tally: _Tally) -> None:
    """Batch of two same-size frames, and a frame cropped to another size (both multiples of the stride)."""
    stride = meta.input.stride
    first = frames[0].frame
    same = [f.frame for f in frames if f.frame.shape == first.shape][:2]
    if len(same) == 2:
        _compare(seg, probe, reference, same, seg.predict_batch(same), meta, tally)
    h = max(meta.input.min_size, (first.shape[0] * 3 // 4) // stride * stride)
    w = max(meta.input.min_size, (first.shape[1] * 5 // 8) // stride * stride)
    if (h, w) != first.shape[:2] and h <= first.shape[0] and w <= first.shape[1]:
        crop = np.ascontiguousarray(first[:h, :w])
        _compare(seg, probe, reference, [crop], [seg.predict(crop)], meta, tally)


def _report(model_path: Path, meta: ModelMeta, frames: list[LabelledFrame], tally: _Tally,
            ref_cm: ConfusionMatrix | None, model_cm: ConfusionMatrix | None, th: Thresholds) -> dict[str, Any]:
    import onnxruntime

    report: dict[str, Any] = {
        "model": model_path.name, "precision": meta.precision,
        "backend": f"usseg_sdk.Segmenter, onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
        "reference": "torch inference net (float32, before to_plain / BatchNorm folding)",
        "n_images": len(frames), "images": [f.name for f in frames], "pixels": tally.pixels, "shapes": tally.shapes,
        "max_abs_diff_probs": tally.max_diff_probs, "max_abs_diff_scores": tally.max_diff_scores,
        "label_agreement": tally.same_labels / max(tally.pixels, 1),
        "cluster_agreement": tally.same_clusters / max(tally.pixels, 1),
        "clusters_used": len(tally.clusters_used),
        "reference_probs_std": _std(tally),
        "miou_reference": None, "miou_model": None, "miou_drop": None, "miou_mapping": None,
        "thresholds": asdict(th),
    }
    if ref_cm is not None and model_cm is not None and ref_cm.n_pixels:
        report.update(_miou(meta, ref_cm, model_cm))
    failures = []
    diffs = [d for d in (tally.max_diff_probs, tally.max_diff_scores) if d is not None]
    if th.max_abs_diff is not None and max(diffs) > th.max_abs_diff:
        failures.append(f"max abs difference {max(diffs):.3g} > {th.max_abs_diff:g}")
    if report["label_agreement"] < th.min_agreement:
        failures.append(f"label agreement {report['label_agreement']:.5f} < {th.min_agreement:g}")
    drop = report["miou_drop"]
    if th.max_miou_drop is not None and drop is not None and drop > th.max_miou_drop:
        failures.append(f"mIoU drop {drop:.4f} > {th.max_miou_drop:g}")
    report["failures"] = failures
    report["passed"] = not failures
    if len(tally.clusters_used) < 2:
        log.warning("the reference net predicts a single cluster on every verification pixel: the comparison "
                    "checks little (untrained or collapsed model?)")
    return report


def _miou(meta: ModelMeta, ref_cm: ConfusionMatrix, model_cm: ConfusionMatrix) -> dict[str, Any]:
    """mIoU of reference and model with one mapping: the model's calibrated one, else fitted on the reference."""
    n_gt = ref_cm.matrix.shape[1]
    if meta.mapping.kind != "identity" and meta.n_classes == n_gt:
        mapping, how = np.asarray(meta.cluster_to_class), f"model ({meta.mapping.kind})"
    else:
        mapping, mode = fit_mapping(ref_cm)
        how = f"{mode}, fitted on the reference"
    ref = segmentation_scores(apply_mapping(ref_cm, mapping, n_gt)).miou
    model = segmentation_scores(apply_mapping(model_cm, mapping, n_gt)).miou
    return {"miou_reference": _num(ref), "miou_model": _num(model),
            "miou_drop": None if math.isnan(ref) or math.isnan(model) else float(ref - model), "miou_mapping": how}


def _std(t: _Tally) -> float:
    if not t.probs_n:
        return 0.0
    mean = t.probs_sum / t.probs_n
    return float(max(t.probs_sq / t.probs_n - mean * mean, 0.0) ** 0.5)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
