"""Verification of an exported model through the customer's code path: ``usseg_sdk.Segmenter`` on onnxruntime CPU.

For every verification frame (the user's, at their own size: :mod:`export.frames` says which folder):

* ``Segmenter.predict(frame)`` with the model's deployment settings gives the labels/clusters the line will get:
  channel conversion, stride padding, and tiling where the line tiles (a static graph smaller than the frame, or
  a frame above the model's pixel budget), stitched back;
* the torch reference (the method's *un-rewritten* inference net, float32) runs on the whole frame, padded to the
  stride only: label and cluster agreement compare what the line gets with the untiled net, so an export for the
  wrong size, or tiles without enough overlap, fail here;
* graph parity: on the exact uint8 input the Segmenter feeds the graph for that frame (the frame, or its first
  tile), a second session on a copy of the model that also outputs the internal probabilities gives their max abs
  difference from the reference's (and the ``scores`` output's, when the model has one).

Frames above twice the pixel budget are cropped (top-left) to it, so the reference stays affordable and the
crop is still tiled as the line tiles it.

Numbers written to ``verify.json`` (see :func:`verify_model`): ``max_abs_diff_probs``, ``max_abs_diff_scores``,
``label_agreement`` / ``cluster_agreement`` (fraction of pixels equal to the reference), ``clusters_used``
(distinct reference clusters seen; 1 means a collapsed model, whose labels agree trivially) and
``reference_probs_std`` (spread of the reference probabilities: ~0 means the comparison checks nothing), and on
labelled frames
``miou_reference``, ``miou_model``, ``miou_drop``; ``frame_sizes``, ``tiled_frames`` and ``shapes`` (every graph
input checked). A dynamic model is also checked on a batch of two and on a second frame size. Thresholds per
precision are :data:`DEFAULT_THRESHOLDS`; failing one raises :class:`~export.errors.VerificationError` carrying
the report. ``label_agreement`` compares classes (the clusters mapped by the model's mapping; with an identity
mapping, the clusters themselves). int8 rounds near-tied clusters apart, which can cost cluster agreement and no
accuracy: an int8 label agreement below the threshold passes when labelled frames show an mIoU drop of at most
``Thresholds.max_miou_drop_instead`` (0.01), and the report says so.
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
from export.frames import image_files
from export.onnx_export import PROBS_NAME, TAIL_PREFIX
from usseg_sdk.config import SegmenterConfig
from usseg_sdk.meta import ModelMeta
from usseg_sdk.metrics import ConfusionMatrix, apply_mapping, fit_mapping, segmentation_scores
from usseg_sdk.preprocess import fill_padded, model_planes, padded_size, validate_frame
from usseg_sdk.segmenter import Segmenter
from usseg_sdk.sources import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

Reference = Callable[[torch.Tensor], torch.Tensor]  # uint8 (B, C, H, W) -> probabilities float32 (B, K, H, W)


@dataclass(frozen=True)
class Thresholds:
    max_abs_diff: float | None  # probabilities and scores vs the torch reference
    min_agreement: float  # fraction of pixels whose label (class) equals the reference's
    max_miou_drop: float | None  # reference mIoU - model mIoU on labelled frames
    max_miou_drop_instead: float | None = None  # a lower agreement passes when the mIoU drop is at most this


DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(max_abs_diff=1e-4, min_agreement=0.999, max_miou_drop=None),
    "fp16": Thresholds(max_abs_diff=None, min_agreement=0.99, max_miou_drop=0.01),
    "int8": Thresholds(max_abs_diff=None, min_agreement=0.95, max_miou_drop=0.02, max_miou_drop_instead=0.01),
}
REFERENCE_BUDGETS = 2  # frames above this many pixel budgets are cropped for verification
DYNAMIC_CHECK_SIDE = 1024  # the batch-of-two and second-size checks of a dynamic graph use crops of at most this


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
    frame_sizes: set[tuple[int, int]] = field(default_factory=set)
    tiled_frames: int = 0
    clusters_used: set[int] = field(default_factory=set)  # reference argmax values seen (1 = degenerate model)
    probs_sum: float = 0.0  # sums of the reference probabilities and their squares, for their std
    probs_sq: float = 0.0
    probs_n: int = 0


# -- frames ------------------------------------------------------------------------------------------------------
def load_frames(images: Path, masks: Path | None = None, *, count: int | None = None,
                channels: int = 1) -> list[LabelledFrame]:
    """The first ``count`` images of a folder (:func:`export.frames.image_files`), with their masks (same stem)."""
    paths = image_files(images)
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
    """Crop (top-left) a frame to at most ``static_hw`` (None: unchanged)."""
    if static_hw is None:
        return item
    h, w = min(item.frame.shape[0], static_hw[0]), min(item.frame.shape[1], static_hw[1])
    mask = None if item.mask is None else item.mask[:h, :w]
    return LabelledFrame(item.name, np.ascontiguousarray(item.frame[:h, :w]), mask)


# -- the check ---------------------------------------------------------------------------------------------------
def verify_model(model_path: Path, reference: Reference, frames: list[LabelledFrame], *,
                 thresholds: Thresholds, n_gt_classes: int | None = None, raise_on_failure: bool = True,
                 progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the checks of the module docstring; returns the report (``passed`` and ``failures`` included).

    ``progress`` is called after each frame."""
    start = time.perf_counter()
    deployed = Segmenter(model_path, config=SegmenterConfig(device="cpu", clusters=True, scores=True))
    untiled = Segmenter(model_path, config=SegmenterConfig(device="cpu", tiling=False, clusters=True, scores=True))
    meta = deployed.meta
    budget = deployed.info()["max_pixels"]
    frames = [_affordable(f, REFERENCE_BUDGETS * budget) if budget else f for f in frames]
    with tempfile.TemporaryDirectory(prefix="usseg-verify-") as tmp:
        probe = Segmenter(with_probs_output(model_path, Path(tmp)), config=untiled.config)
        tally, ref_cm, model_cm = _run_frames(deployed, probe, reference, frames, meta, n_gt_classes, progress)
        if _static_hw(untiled) is None:
            _check_dynamic(untiled, probe, reference, frames, meta, tally)
        probe.close()
    deployed.close()
    untiled.close()
    report = _report(model_path, meta, frames, tally, ref_cm, model_cm, thresholds)
    report["seconds"] = round(time.perf_counter() - start, 2)
    if raise_on_failure and not report["passed"]:
        raise VerificationError(f"verification of {model_path} failed: " + "; ".join(report["failures"]), report)
    return report


def _affordable(item: LabelledFrame, pixels: int) -> LabelledFrame:
    """A frame of more than ``pixels`` cropped (top-left, same aspect) to about that many."""
    h, w = item.frame.shape[:2]
    if h * w <= pixels:
        return item
    scale = (pixels / (h * w)) ** 0.5
    return fit_frame(item, (max(1, int(h * scale)), max(1, int(w * scale))))


def deployed_input(seg: Segmenter, frame: np.ndarray) -> np.ndarray:
    """The graph input the line feeds for ``frame``: the frame, or when ``seg`` tiles it, its first (top-left)
    tile; (1, C, H, W) as ``Segmenter.preprocess`` builds it."""
    tile = seg.tile_for(frame)
    if tile is not None:
        frame = np.ascontiguousarray(frame[:tile[0], :tile[1]])
    return seg.preprocess([frame])


def reference_input(frame: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """The whole frame as the graph would take it untiled: (1, C, H, W) uint8 padded to the stride (reflect)."""
    planes = model_planes(validate_frame(frame), meta.input)
    batch = np.empty((1, meta.input.channels, *padded_size(*planes[0].shape, meta.input)), np.uint8)
    fill_padded(batch[0], planes)
    return batch


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
                meta: ModelMeta, n_gt: int | None, progress: Callable[[], None] | None
                ) -> tuple[_Tally, ConfusionMatrix | None, ConfusionMatrix | None]:
    tally = _Tally()
    labelled = [f for f in frames if f.mask is not None]
    if labelled and n_gt is None:
        n_gt = max(int(f.mask[f.mask != 255].max(initial=0)) for f in labelled) + 1
    ref_cm = ConfusionMatrix(meta.n_clusters, n_gt) if labelled else None
    model_cm = ConfusionMatrix(meta.n_clusters, n_gt) if labelled else None
    for item in frames:
        result = seg.predict(item.frame)  # as the line gets it
        h, w = result.labels.shape
        tally.frame_sizes.add((h, w))
        tally.tiled_frames += seg.tile_for(item.frame) is not None
        whole = reference_input(item.frame, meta)
        probs = _reference_probs(reference, whole)  # (1, K, Hp, Wp)
        ref_clusters = probs[0, :, :h, :w].argmax(axis=0)
        tally.pixels += h * w
        tally.same_labels += int((np.asarray(meta.cluster_to_class)[ref_clusters] == result.labels).sum())
        tally.same_clusters += int((ref_clusters == result.clusters).sum())
        graph_input = deployed_input(seg, item.frame)
        same = graph_input.shape == whole.shape and np.array_equal(graph_input, whole)
        _parity(seg, probe, reference, graph_input, probs if same else None, meta, tally)
        if item.mask is not None and ref_cm is not None and model_cm is not None:
            ref_cm.update(ref_clusters, item.mask)
            model_cm.update(result.clusters, item.mask)
        if progress is not None:
            progress()
    return tally, ref_cm, model_cm


def _reference_probs(reference: Reference, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return reference(torch.from_numpy(batch)).float().numpy()


def _parity(seg: Segmenter, probe: Segmenter, reference: Reference, batch: np.ndarray, probs: np.ndarray | None,
            meta: ModelMeta, tally: _Tally) -> None:
    """Graph parity on one graph input (B, C, H, W): probabilities, and scores when the model has them."""
    if probs is None:
        probs = _reference_probs(reference, batch)
    fetch = [PROBS_NAME] + ([meta.outputs.scores] if meta.outputs.scores else [])
    out = probe.backend.run({seg.input_name: batch}, fetch)
    onnx_probs = out[PROBS_NAME].astype(np.float32)
    tally.max_diff_probs = max(tally.max_diff_probs, float(np.abs(onnx_probs - probs).max()))
    tally.shapes.append(list(batch.shape))
    clusters = probs.argmax(axis=1)
    tally.clusters_used.update(np.unique(clusters).tolist())
    tally.probs_sum += float(probs.sum(dtype=np.float64))
    tally.probs_sq += float(np.square(probs, dtype=np.float64).sum())
    tally.probs_n += probs.size
    if meta.outputs.scores:
        onehot = np.zeros((meta.n_classes, meta.n_clusters), np.float32)
        onehot[np.asarray(meta.cluster_to_class), np.arange(meta.n_clusters)] = 1.0
        diff = float(np.abs(np.einsum("ck,bkhw->bchw", onehot, probs) - out[meta.outputs.scores]).max())
        tally.max_diff_scores = max(tally.max_diff_scores or 0.0, diff)


def _compare(seg: Segmenter, probe: Segmenter, reference: Reference, frames: list[np.ndarray], results: list,
             meta: ModelMeta, tally: _Tally) -> None:
    """Untiled ``seg`` on one batch of same-size frames: graph parity on its input, and its labels and clusters
    against the reference's."""
    batch = seg.preprocess(frames)  # (B, C, Hp, Wp) uint8, exactly what predict fed the graph
    probs = _reference_probs(reference, batch)
    _parity(seg, probe, reference, batch, probs, meta, tally)
    mapping = np.asarray(meta.cluster_to_class)
    for i, result in enumerate(results):
        h, w = result.labels.shape
        clusters = probs[i, :, :h, :w].argmax(axis=0)
        tally.pixels += h * w
        tally.same_labels += int((mapping[clusters] == result.labels).sum())
        tally.same_clusters += int((clusters == result.clusters).sum())


def _check_dynamic(seg: Segmenter, probe: Segmenter, reference: Reference, frames: list[LabelledFrame],
                   meta: ModelMeta, tally: _Tally) -> None:
    """Batch of two same-size frames, and a frame cropped to another size (both multiples of the stride)."""
    stride = meta.input.stride
    side = DYNAMIC_CHECK_SIDE  # these run untiled: keep them small whatever the frames' size
    first = np.ascontiguousarray(frames[0].frame[:side, :side])
    same = [np.ascontiguousarray(f.frame[:side, :side]) for f in frames if f.frame.shape == frames[0].frame.shape][:2]
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
        "n_images": len(frames), "images": [f.name for f in frames], "pixels": tally.pixels,
        "frame_sizes": sorted([h, w] for h, w in tally.frame_sizes), "tiled_frames": tally.tiled_frames,
        "shapes": tally.shapes,
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
    drop = report["miou_drop"]
    if report["label_agreement"] < th.min_agreement:
        instead = th.max_miou_drop_instead
        if instead is not None and drop is not None and drop <= instead:
            report["agreement_note"] = (f"label agreement {report['label_agreement']:.5f} < {th.min_agreement:g} "
                                        f"accepted: the mIoU drop {drop:.4f} <= {instead:g}")
        else:
            failures.append(f"label agreement {report['label_agreement']:.5f} < {th.min_agreement:g}"
                            + (f" (and no mIoU drop <= {instead:g} on labelled frames to accept it)"
                               if instead is not None else ""))
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
