"""``usseg calibrate``: name an unsupervised model's clusters from a few labelled frames — no retraining.

The model's ``clusters`` output is run on the frames; a confusion matrix ``[cluster, class]`` against the masks
(:class:`usseg_sdk.metrics.ConfusionMatrix`) is matched by :func:`usseg_sdk.metrics.fit_mapping`: one-to-one
(Hungarian, when there are at most as many clusters as classes), many-to-one (each cluster to its majority class,
for over-clustered models), as in IIC's evaluation protocol, or ``miou`` (many-to-one for the best mIoU of the
labelled frames: the accuracy benchmark's protocol (c)). The fitted mapping is written into a new model: the ONNX
initializers ``usseg_cluster_to_class`` / ``usseg_class_from_cluster`` and the metadata (embedded and ``model.json``); a
TensorRT engine cannot be edited, so it is copied with a new ``model.engine.json`` whose ``outputs.labels`` is
None (the runtime then maps ``clusters`` itself). Rewriting ONNX needs the ``onnx`` package (torch-free, in the
``cpu`` and ``gpu`` extras).

Masks are single-channel PNGs of class ids with the image's stem (``255`` = ignore), as in
``samples/neu-seg/masks``. Class names come from ``--class-names a,b,c`` or a ``labels.txt`` (one per line)
beside the masks.

This module is the library; ``usseg calibrate`` (:mod:`usseg_sdk.cli.calibrate`) and export's ``--calibrate``
(:mod:`export.calibrate`) call :func:`calibrate` and write with :func:`write_outputs` / :func:`set_mapping`.

Example:
    >>> seg = Segmenter("export/", config=SegmenterConfig(device="cpu", clusters=True, scores=False))  # doctest: +SKIP
    >>> result = calibrate(seg, CalibrationOptions(images=Path("frames"), masks=Path("masks")))  # doctest: +SKIP
    >>> print(result.summary())                                                              # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from usseg_sdk.atomic import atomic_path, write_text_atomic
from usseg_sdk.errors import CalibrationError
from usseg_sdk.manual_mapping import parse_manual_mapping
from usseg_sdk.masks import CLASS_IDS, MaskEncoding, detect_mask_encoding, max_label, read_mask
from usseg_sdk.meta import MAPPING_INITIALIZER, METADATA_KEY, SCORES_INITIALIZER, ClassInfo, MappingInfo, ModelMeta
from usseg_sdk.meta import default_palette as palette
from usseg_sdk.metrics import (
    MAPPING_MODES,
    ConfusionMatrix,
    SegmentationScores,
    apply_mapping,
    fit_mapping,
    hungarian_match,
    many_to_one_match,
    segmentation_scores,
)
from usseg_sdk.sources import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationOptions:
    """What to calibrate on and how (the flags of ``usseg calibrate`` and export's ``--calibrate`` / ``--map``).

    ``manual_map`` (``"3=scratches,7=scratches"``, :mod:`usseg_sdk.manual_mapping`) replaces the fit; the labelled
    frames are then optional and only score it.
    """

    images: Path | None
    masks: Path | None
    mode: str = "auto"  # auto: hungarian when K <= classes, else many_to_one (usseg_sdk.metrics.matching_mode)
    class_names: str | None = None  # "a,b,c", class 0 first
    labels_file: Path | None = None
    background: int | None = 0  # class that is not a defect
    ignore_index: int = 255
    mask_threshold: int | None = None  # read masks as binary: values >= this are the defect (usseg_sdk.masks)
    manual_map: str | None = None


@dataclass
class Calibration:
    mapping: np.ndarray  # (n_clusters,) int64 cluster -> class
    mode: str  # hungarian, many_to_one, miou or manual
    scores: SegmentationScores | None  # None: a manual mapping without labelled frames
    n_images: int
    confusion: np.ndarray | None  # (n_clusters, n_classes) [cluster, class]
    masks: MaskEncoding = CLASS_IDS


@dataclass
class CalibrationResult:
    """A fitted calibration and the new metadata: ``meta`` for a rewritten ONNX graph (labels in the graph),
    ``engine_meta`` for a TensorRT engine beside it (labels mapped by the runtime; None without an engine)."""

    meta: ModelMeta
    calibration: Calibration
    engine_meta: ModelMeta | None = None

    def report(self) -> dict[str, Any]:
        """The JSON report (``calibration.json``, export's ``verify.json``)."""
        cal = self.calibration
        return {"mode": cal.mode, "n_images": cal.n_images, "mapping": cal.mapping.tolist(),
                "cluster_confusion": None if cal.confusion is None else cal.confusion.tolist(),
                "scores": None if cal.scores is None else cal.scores.to_dict(), "masks": cal.masks.to_dict()}

    def summary(self) -> str:
        """The mapping and the scores on the labelled frames, for a person."""
        cal, names, s = self.calibration, self.meta.class_names, self.calibration.scores
        head = f"calibrated on {cal.n_images} images ({cal.mode})" if cal.n_images else f"{cal.mode} mapping"
        lines = [f"{head}; cluster -> class: " + ", ".join(f"{k}->{names[c]}" for k, c in enumerate(cal.mapping))]
        if s is None:
            return "\n".join([*lines, "  not scored: no labelled frames (--images, --masks)"])
        lines += [*([f"  masks read as binary: {cal.masks.reason}"] if cal.masks.kind == "binary" else []),
                  f"  pixel accuracy {s.pixel_accuracy:.4f}  mIoU {s.miou:.4f}  defect IoU {s.defect_iou:.4f} (mean "
                  f"over the defect classes)  binary defect IoU {s.binary_defect_iou:.4f} (defect vs background)  "
                  f"defect F1 {s.defect_f1:.4f}"]
        lines += [f"    {name:<20} IoU {iou:.4f}  F1 {f1:.4f}"
                  for name, iou, f1 in zip(names, s.iou, s.f1, strict=True)]
        return "\n".join(lines)


# -- inputs ------------------------------------------------------------------------------------------------------
def find_pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by file stem; images without a mask are skipped (and logged)."""
    for folder in (images, masks):
        if not folder.is_dir():
            raise CalibrationError(f"{folder} is not a folder")
    mask_by_stem = {p.stem: p for p in sorted(masks.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    image_paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = [(p, mask_by_stem[p.stem]) for p in image_paths if p.stem in mask_by_stem]
    if not pairs:
        raise CalibrationError(f"no image in {images} has a mask of the same name in {masks}")
    if len(pairs) < len(image_paths):
        log.info("calibrate: %d of %d images have no mask and are skipped", len(image_paths) - len(pairs),
                 len(image_paths))
    return pairs


def class_names_for(args_names: str | None, labels_file: Path | None, masks: Path | None) -> list[str] | None:
    if args_names:
        return [n.strip() for n in args_names.split(",") if n.strip()]
    candidates = [labels_file] if labels_file else [masks / "labels.txt", masks.parent / "labels.txt"] if masks else []
    for path in candidates:
        if path is not None and path.is_file():
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if labels_file:
        raise CalibrationError(f"labels file {labels_file} does not exist")
    return None


# -- fitting -----------------------------------------------------------------------------------------------------
def calibrate(seg: Any, options: CalibrationOptions) -> CalibrationResult:
    """Fit (or take from ``options.manual_map``) the cluster-to-class mapping of the model ``seg`` (a Segmenter
    returning clusters) and score it on the labelled frames."""
    _check(options)
    pairs = find_pairs(options.images, options.masks) if options.images is not None else []
    names = class_names_for(options.class_names, options.labels_file, options.masks)
    masks = detect_mask_encoding(pairs, options.mask_threshold, len(names) if names else None) if pairs \
        else CLASS_IDS
    if options.manual_map is not None:
        mapping, names = parse_manual_mapping(options.manual_map, seg.meta.n_clusters, names, options.background)
        cal = score(seg, pairs, mapping, "manual", options.ignore_index, names, options.background, masks)
        source = f"--map {options.manual_map}"
    else:
        n_classes = len(names) if names else max_label(pairs, options.ignore_index, masks) + 1
        if not names:
            names = ["background", "defect"] if masks.kind == "binary" else [f"class_{i}" for i in range(n_classes)]
        cal = fit(seg, pairs, n_classes, options.mode, options.ignore_index, names, options.background, masks)
        source = str(options.images)
    base = _written_meta(seg)
    meta = calibrated_meta(base, cal, names, options.background, source, labels_in_graph=True)
    engine_meta = calibrated_meta(base, cal, names, options.background, source, labels_in_graph=False) \
        if seg.files.engine is not None else None
    return CalibrationResult(meta, cal, engine_meta)


def _check(options: CalibrationOptions) -> None:
    if options.mode not in ("auto", *MAPPING_MODES):
        raise CalibrationError(f"calibration mode must be auto or one of {MAPPING_MODES}, got {options.mode!r}")
    if options.manual_map is not None and options.mode != "auto":
        raise CalibrationError(f"give --map or --mode, not both (--mode {options.mode} fits a mapping, --map "
                               "names the clusters by hand)")
    if (options.images is None) != (options.masks is None):
        raise CalibrationError("--images and --masks go together: frames and their masks")
    if options.images is None and options.manual_map is None:
        raise CalibrationError("fitting a mapping needs labelled frames: give --images and --masks (or name the "
                               "clusters by hand with --map CLUSTER=CLASS,...)")


def _written_meta(seg: Any) -> ModelMeta:
    """The metadata as its file says: a Segmenter running an edited model.json mapping has switched the graph's
    labels and scores outputs off in memory (usseg_sdk.meta_source), which the rewritten graph must not inherit."""
    source = getattr(seg, "meta_source", None)
    if source is not None and source.kind == "sidecar":
        return ModelMeta.load(source.path)
    return seg.meta


def fit(seg: Any, pairs: list[tuple[Path, Path]], n_classes: int, mode: str = "auto", ignore_index: int = 255,
        class_names: list[str] | None = None, background: int | None = 0,
        masks: MaskEncoding = CLASS_IDS) -> Calibration:
    """Run the model's clusters on the pairs and fit the mapping (``mode``: auto or one of ``MAPPING_MODES``).

    ``hungarian`` with more clusters than classes gives each class its best cluster (one-to-one) and the other
    clusters to ``background`` (their majority class when there is none). A mapping that names no cluster a defect
    while the masks hold defect pixels is refused (CalibrationError): deployed, it would never report a defect.
    """
    matrix = confusion(seg, pairs, n_classes, ignore_index, masks)
    if mode == "hungarian" and seg.meta.n_clusters > n_classes:
        mapping = _hungarian_with_spare_clusters(matrix.matrix, background)
    else:
        mapping, mode = fit_mapping(matrix, mode)
    _check_names_a_defect(matrix.matrix, mapping, mode, background)
    return score(seg, pairs, mapping, mode, ignore_index, class_names, background, masks, matrix)


def score(seg: Any, pairs: list[tuple[Path, Path]], mapping: np.ndarray, mode: str, ignore_index: int = 255,
          class_names: list[str] | None = None, background: int | None = 0, masks: MaskEncoding = CLASS_IDS,
          matrix: ConfusionMatrix | None = None) -> Calibration:
    """The Calibration of ``mapping`` with its scores on the pairs (None without pairs)."""
    n_classes = len(class_names) if class_names else matrix.n_gt if matrix is not None else int(mapping.max()) + 1
    if not pairs:
        return Calibration(mapping, mode, None, 0, None, masks)
    matrix = matrix if matrix is not None else confusion(seg, pairs, n_classes, ignore_index, masks)
    scores = segmentation_scores(apply_mapping(matrix, mapping, n_classes), class_names=class_names,
                                 background=background)
    return Calibration(mapping, mode, scores, len(pairs), matrix.matrix.copy(), masks)


def confusion(seg: Any, pairs: list[tuple[Path, Path]], n_classes: int, ignore_index: int = 255,
              masks: MaskEncoding = CLASS_IDS) -> ConfusionMatrix:
    """[cluster, class] pixel counts of the model's clusters against the masks."""
    matrix = ConfusionMatrix(seg.meta.n_clusters, n_classes, ignore_index=ignore_index)
    flags = cv2.IMREAD_UNCHANGED if seg.meta.input.channels == 4 else cv2.IMREAD_COLOR
    for image_path, mask_path in pairs:
        frame = cv2.imread(str(image_path), flags)
        if frame is None:
            raise CalibrationError(f"cannot read image {image_path}")
        result = seg.predict(frame)
        matrix.update(result.clusters, read_mask(mask_path, result.shape, masks))
    return matrix


def _hungarian_with_spare_clusters(counts: np.ndarray, background: int | None) -> np.ndarray:
    class_to_cluster = hungarian_match(counts.T)  # (n_classes,) distinct clusters, one per class
    mapping = many_to_one_match(counts) if background is None else np.full(counts.shape[0], background, np.int64)
    mapping[class_to_cluster] = np.arange(counts.shape[1])
    return mapping


def _check_names_a_defect(confusion: np.ndarray, mapping: np.ndarray, mode: str, background: int | None) -> None:
    if background is None or (mapping != background).any():
        return
    defect = int(confusion.sum()) - int(confusion[:, background].sum()) if background < confusion.shape[1] else 0
    if defect == 0:
        return
    share = 100.0 * defect / max(int(confusion.sum()), 1)
    raise CalibrationError(
        f"the {mode} mapping names no cluster a defect although the masks hold {defect} defect pixels "
        f"({share:.2f} % of the labelled pixels): no cluster holds mostly defect, so the model would never report "
        "one. Try --mode miou (export: --mapping miou; names a cluster after a defect when that raises the IoU), a "
        "model with more clusters (export --head over, an over-clustering head), or more frames with defects")


def calibrated_meta(meta: ModelMeta, cal: Calibration, class_names: list[str], background: int | None,
                    source: str, labels_in_graph: bool) -> ModelMeta:
    old = {c.name: c.color for c in meta.classes}
    colours = palette(len(class_names))
    classes = [ClassInfo(name=n, color=old.get(n, colours[i]), defect=i != background)
               for i, n in enumerate(class_names)]
    metrics = {} if cal.scores is None else _metrics(cal.scores, class_names)
    outputs = meta.outputs if labels_in_graph else meta.outputs.model_copy(update={"labels": None})
    if meta.outputs.scores is not None and not labels_in_graph:
        outputs = outputs.model_copy(update={"scores": None})  # an engine's scores keep the old classes
    new = meta.model_copy(update={
        "classes": classes, "cluster_to_class": [int(c) for c in cal.mapping], "outputs": outputs,
        "mapping": MappingInfo(kind=cal.mode, n_images=cal.n_images, metrics=metrics, source=source)})
    return ModelMeta.from_dict(new.model_dump(mode="json"), origin="calibrated metadata")  # validated again


def _metrics(scores: SegmentationScores, class_names: list[str]) -> dict[str, float]:
    summary = {"pixel_accuracy": scores.pixel_accuracy, "miou": scores.miou, "defect_iou": scores.defect_iou,
               "binary_defect_iou": scores.binary_defect_iou, "defect_f1": scores.defect_f1}
    summary.update({f"iou/{n}": float(v) for n, v in zip(class_names, scores.iou, strict=True)})
    return {k: float(v) for k, v in summary.items() if not math.isnan(v)}


# -- writing -----------------------------------------------------------------------------------------------------
def rewrite_onnx(src: Path, dst: Path, meta: ModelMeta) -> Path:
    """Copy ``src`` to ``dst`` with the mapping initializers and the embedded metadata replaced."""
    onnx = _import_onnx("rewriting an ONNX model")
    model = onnx.load(str(src))
    try:
        set_mapping(model, meta)
    except CalibrationError as e:
        raise CalibrationError(f"{src}: {e}") from e
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=meta.to_json(indent=None))
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return dst


def set_mapping(model: Any, meta: ModelMeta) -> Any:
    """Write ``meta.cluster_to_class`` into an ``onnx.ModelProto``: the ``usseg_cluster_to_class`` initializer,
    and when the graph has scores ``usseg_class_from_cluster`` (one-hot (n_classes, K)) and the scores output's
    class axis. Returns ``model`` (changed in place)."""
    numpy_helper = _import_onnx("rewriting an ONNX model").numpy_helper
    inits = {init.name: init for init in model.graph.initializer}
    if MAPPING_INITIALIZER not in inits:
        raise CalibrationError(f"the graph has no {MAPPING_INITIALIZER!r} initializer: not a graph exported by usseg")
    mapping = np.asarray(meta.cluster_to_class, np.int64)
    inits[MAPPING_INITIALIZER].CopyFrom(numpy_helper.from_array(mapping, MAPPING_INITIALIZER))
    if SCORES_INITIALIZER in inits:
        onehot = np.zeros((meta.n_classes, meta.n_clusters), np.float32)  # (n_classes, K) one-hot columns
        onehot[mapping, np.arange(meta.n_clusters)] = 1.0
        inits[SCORES_INITIALIZER].CopyFrom(numpy_helper.from_array(onehot, SCORES_INITIALIZER))
    for out in model.graph.output:
        if out.name == meta.outputs.scores:
            dims = out.type.tensor_type.shape.dim
            if len(dims) == 4:
                dims[1].dim_value = meta.n_classes
    return model


def _import_onnx(purpose: str) -> Any:
    try:
        onnx = importlib.import_module("onnx")
        importlib.import_module("onnx.numpy_helper")
    except ImportError as e:
        raise CalibrationError(f"{purpose} needs the onnx package (torch-free; part of usseg-sdk's cpu and gpu "
                               "extras): pip install onnx") from e
    return onnx


def write_outputs(files: Any, out: Path, meta: ModelMeta, engine_meta: ModelMeta | None) -> list[Path]:
    """Write the calibrated model(s) to ``out`` (a ``.onnx`` path or a folder); returns the files written."""
    written: list[Path] = []
    if out.suffix.lower() == ".onnx":
        if files.onnx is None:
            raise CalibrationError(f"{files.engine} is a TensorRT engine; --out must be a folder, not {out}")
        written.append(rewrite_onnx(files.onnx, out, meta))
        written.append(meta.save(out.with_suffix(".json")))
        return written
    out.mkdir(parents=True, exist_ok=True)
    if files.onnx is not None:
        written.append(rewrite_onnx(files.onnx, out / "model.onnx", meta))
        written.append(meta.save(out / "model.json"))
    if files.engine is not None and engine_meta is not None:
        engine = out / f"model{files.engine.suffix}"
        if files.engine.resolve() != engine.resolve():
            with atomic_path(engine) as tmp:
                shutil.copyfile(files.engine, tmp)
        written += [engine, engine_meta.save(engine.with_name(engine.name + ".json"))]
    return written


def save(files: Any, out: Path, result: CalibrationResult) -> list[Path]:
    """Write the calibrated model(s) (:func:`write_outputs`) and ``calibration.json`` beside them."""
    written = write_outputs(files, out, result.meta, result.engine_meta)
    report = {**result.report(), "files": [str(p) for p in written]}
    report_dir = out.parent if out.suffix.lower() == ".onnx" else out
    write_text_atomic(report_dir / "calibration.json", json.dumps(report, indent=2) + "\n")
    return written
