"""Evaluation of unsupervised segmentation: cluster-vs-class confusion, cluster matching, pixel accuracy and IoU.

An unsupervised model outputs cluster ids, not class ids. To score it (or to deploy it), clusters are matched to
classes on labelled pixels, then the matched prediction is scored like a supervised one:

1. :class:`ConfusionMatrix` streams (prediction, ground truth) pixel pairs into counts ``[pred, gt]``.
2. :func:`fit_mapping` fits a cluster -> class mapping: :func:`hungarian_match` (one-to-one, IIC's "IID"
   protocol and PiCIE's), :func:`many_to_one_match` (each cluster to its most frequent class, IIC's
   over-clustering "IID+" protocol) or :func:`miou_fitted_match` (many-to-one, chosen for the best mIoU of the
   labelled pixels: names a defect cluster that majority voting would give to the background). Which one ``"auto"``
   means is decided by :func:`matching_mode` alone, for training, the benchmarks and ``usseg calibrate``.
3. :func:`apply_mapping` turns a cluster confusion into a class confusion. The mapping may be fitted on one
   split and applied to another ("name the clusters from a few labelled frames"), or on the same data (IIC).
4. :func:`segmentation_scores` computes pixel accuracy, per-class IoU / precision / recall / F1, mIoU and the
   defect-only means.

References (numbers reproduced by ``tests/sdk/test_metrics_parity.py``):

* IIC, Ji et al. 2019, official ``code/utils/cluster/eval_metrics.py`` (``_hungarian_match``, ``_original_match``,
  ``_acc``) and ``cluster_eval.py`` (sub-head selection): pixel accuracy after matching.
* PiCIE, Cho et al. 2021, official ``utils.py`` (``scores``, ``get_result_metrics``) and ``commons.py``
  (``evaluate``): IoU = tp / (tp + fp + fn), mIoU = nanmean over classes (a class absent from both the
  ground truth and the prediction has NaN IoU and is skipped).

Departures from the official code (deliberate; do not "fix"):

* Scores are fractions in [0, 1], not percentages.
* Our matrices are ``[pred, gt]`` (IIC's orientation). PiCIE's histogram is ``[gt, pred]``, its transpose.
* Per-class arrays are indexed by **class**. PiCIE reorders the histogram rows into prediction order
  (``new_hist[match[:, 1]] = hist[match[:, 0]]``), so its per-class IoU list is indexed by matched cluster.
* PiCIE's "precision" is ``tp / (tp + fn)`` on its ``[gt, pred]`` histogram, i.e. per-class *recall* (class
  accuracy); our ``recall`` reproduces it and our ``precision`` is the usual ``tp / (tp + fp)``.
* IIC's one-to-one matching requires as many clusters as classes. We also allow fewer clusters than classes
  (each cluster still gets its own class; the remaining classes are never predicted). More clusters than classes
  raises ``ValueError`` pointing to :func:`many_to_one_match`: an unmatched cluster would have no class, and a
  deployed label map needs one for every cluster.

Example:
    >>> import numpy as np
    >>> gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])      # 255 = ignore
    >>> clusters = np.array([[2, 2, 0, 0], [2, 1, 0, 0]])
    >>> cm = ConfusionMatrix(n_pred=3, n_gt=3)
    >>> cm.update(clusters, gt).matrix.tolist()              # [pred, gt]; the 255 pixel is skipped
    [[0, 3, 0], [1, 0, 0], [3, 0, 0]]
    >>> mapping, scores = evaluate_clusters(cm, mode="many_to_one", class_names=["steel", "scratch", "pit"])
    >>> mapping.tolist()                                     # cluster -> class
    [1, 0, 0]
    >>> round(scores.pixel_accuracy, 3), round(scores.miou, 3)
    (1.0, 1.0)
    >>> scores.to_dict()["per_class"]["pit"]["iou"] is None  # absent from gt and prediction: NaN -> None
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

log = logging.getLogger(__name__)

_INTEGER_KINDS = "biu"  # bool, signed, unsigned


class ConfusionMatrix:
    """Streaming pixel counts ``matrix[pred, gt]`` (int64), never holding the pixels themselves.

    Pixels whose ground truth equals ``ignore_index`` or lies outside ``[0, n_gt)`` are skipped (so -1 and 255
    both mean "unlabelled"). Predictions must lie in ``[0, n_pred)``; anything else is a ``ValueError``.

    Example:
        >>> cm = ConfusionMatrix(n_pred=2, n_gt=2)
        >>> cm.update(np.array([0, 1, 1]), np.array([0, 1, 0])).matrix.tolist()
        [[1, 0], [1, 1]]
    """

    def __init__(self, n_pred: int, n_gt: int, ignore_index: int | None = 255):
        for name, n in (("n_pred", n_pred), ("n_gt", n_gt)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"{name} must be a positive integer, got {n!r}")
        self.n_pred = int(n_pred)
        self.n_gt = int(n_gt)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self._counts = np.zeros(self.n_pred * self.n_gt, dtype=np.int64)  # flat [pred * n_gt + gt]

    @property
    def matrix(self) -> np.ndarray:
        """Counts ``[pred, gt]``, int64 (n_pred, n_gt); a read-only view."""
        view = self._counts.reshape(self.n_pred, self.n_gt).view()
        view.flags.writeable = False
        return view

    @property
    def n_pixels(self) -> int:
        """Number of pixels counted so far (ignored pixels excluded)."""
        return int(self._counts.sum())

    def update(self, pred: np.ndarray, gt: np.ndarray) -> ConfusionMatrix:
        """Add the pixels of ``pred`` and ``gt`` (integer arrays of the same, any, shape). Returns self."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}")
        for name, a in (("pred", pred), ("gt", gt)):
            if a.dtype.kind not in _INTEGER_KINDS:
                raise ValueError(f"{name} must be an integer array (cluster / class ids), got dtype {a.dtype}")
        if pred.size == 0:
            return self
        pred, gt = pred.ravel(), gt.ravel()
        low, high = pred.min(), pred.max()
        if low < 0 or high >= self.n_pred:
            raise ValueError(f"pred holds ids in [{low}, {high}], outside [0, {self.n_pred}) (n_pred={self.n_pred})")
        valid = self._valid_gt(gt)
        if valid is not None:
            pred, gt = pred[valid], gt[valid]
        flat = pred.astype(np.int64) * self.n_gt + gt.astype(np.int64)  # (N,) index into flat [pred, gt]
        self._counts += np.bincount(flat, minlength=self._counts.size)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another worker or shard) into this one. Returns self."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        mine = (self.n_pred, self.n_gt, self.ignore_index)
        theirs = (other.n_pred, other.n_gt, other.ignore_index)
        if mine != theirs:
            raise ValueError(f"cannot merge (n_pred, n_gt, ignore_index) = {theirs} into {mine}")
        self._counts += other._counts
        return self

    def reset(self) -> None:
        """Zero the counts."""
        self._counts[:] = 0

    def __repr__(self) -> str:
        return f"ConfusionMatrix(n_pred={self.n_pred}, n_gt={self.n_gt}, pixels={self.n_pixels})"

    def _valid_gt(self, gt: np.ndarray) -> np.ndarray | None:
        """Boolean mask of the pixels to count, or None when all are (the common fast path)."""
        valid = gt < self.n_gt
        if gt.dtype.kind == "i":
            valid &= gt >= 0
        if self.ignore_index is not None and 0 <= self.ignore_index < self.n_gt:
            valid &= gt != self.ignore_index
        return None if valid.all() else valid


def hungarian_match(matrix: np.ndarray | ConfusionMatrix) -> np.ndarray:
    """One-to-one cluster -> class mapping maximising the matched pixels (IIC ``_hungarian_match``).

    ``matrix`` is ``[pred, gt]``. Returns int64 (n_pred,) with distinct classes. IIC minimises
    ``N - matrix`` and PiCIE ``matrix.max() - matrix`` with the same optimum; ties between optimal assignments
    are broken deterministically by scipy. Needs n_pred <= n_gt (see the module docstring).

    Example:
        >>> hungarian_match(np.array([[1, 9], [8, 2]])).tolist()
        [1, 0]
    """
    counts = _as_counts(matrix)
    n_pred, n_gt = counts.shape
    if n_pred > n_gt:
        raise ValueError(
            f"one-to-one (Hungarian) matching needs n_pred <= n_gt, got {n_pred} clusters for {n_gt} classes; "
            "use many_to_one_match for over-clustering"
        )
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.empty(n_pred, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def many_to_one_match(matrix: np.ndarray | ConfusionMatrix) -> np.ndarray:
    """Each cluster -> its most frequent class (IIC ``_original_match``). Returns int64 (n_pred,).

    Ties go to the lowest class id, and a cluster with no labelled pixel goes to class 0, as in IIC.

    Example:
        >>> many_to_one_match(np.array([[5, 1], [0, 3], [4, 0]])).tolist()
        [0, 1, 0]
    """
    return np.argmax(_as_counts(matrix), axis=1).astype(np.int64)


MAPPING_MODES = ("hungarian", "many_to_one", "miou")  # what fit_mapping fits; "auto" picks one by matching_mode


def matching_mode(n_clusters: int, n_classes: int) -> str:
    """What ``"auto"`` means everywhere: one-to-one Hungarian when every cluster can have a class of its own
    (``n_clusters <= n_classes``), else each cluster to its majority class.

    Example:
        >>> matching_mode(4, 4), matching_mode(3, 4), matching_mode(20, 4)
        ('hungarian', 'hungarian', 'many_to_one')
    """
    return "hungarian" if n_clusters <= n_classes else "many_to_one"


def miou_fitted_match(matrix: np.ndarray | ConfusionMatrix, max_sweeps: int = 20) -> np.ndarray:
    """Many-to-one cluster -> class mapping chosen for the mIoU of ``matrix``'s own pixels, not the majority vote.

    Coordinate ascent from :func:`many_to_one_match`: one cluster at a time takes the class that raises the mIoU
    most, until a sweep changes nothing (or ``max_sweeps``). With 88 % background pixels, a cluster holding most
    of a defect's pixels but more background still goes to background by majority, and that defect is never
    predicted; this names it after the defect when that is what the IoU rewards. Deterministic (clusters and
    classes in id order, strict improvements only). Returns int64 (n_pred,).

    Example:
        >>> m = np.array([[90, 0], [6, 4], [0, 0]])            # cluster 1: 4 of the 4 defect pixels, 6 background
        >>> many_to_one_match(m).tolist(), miou_fitted_match(m).tolist()
        ([0, 0, 0], [0, 1, 0])
    """
    counts = _as_counts(matrix).astype(np.float64)
    mapping = many_to_one_match(counts)
    best = _mapped_miou(counts, mapping)
    for _ in range(max_sweeps):
        improved = False
        for k in range(counts.shape[0]):
            for c in range(counts.shape[1]):
                if c == mapping[k]:
                    continue
                old, mapping[k] = mapping[k], c
                score = _mapped_miou(counts, mapping)
                if score > best + 1e-12:
                    best, improved = score, True
                else:
                    mapping[k] = old
        if not improved:
            break
    return mapping


def fit_mapping(matrix: np.ndarray | ConfusionMatrix, mode: str = "auto") -> tuple[np.ndarray, str]:
    """Fit a cluster -> class mapping on ``matrix`` ``[pred, gt]``; returns (int64 (n_pred,), the mode used).

    ``mode``: ``"auto"`` (:func:`matching_mode`), ``"hungarian"``, ``"many_to_one"`` or ``"miou"``
    (:func:`miou_fitted_match`). Hungarian with more clusters than classes raises ``ValueError``.

    Example:
        >>> mapping, mode = fit_mapping(np.array([[1, 9], [8, 2]]))
        >>> mapping.tolist(), mode
        ([1, 0], 'hungarian')
    """
    counts = _as_counts(matrix)
    if mode == "auto":
        mode = matching_mode(*counts.shape)
    if mode == "hungarian":
        return hungarian_match(counts), mode
    if mode == "many_to_one":
        return many_to_one_match(counts), mode
    if mode == "miou":
        return miou_fitted_match(counts), mode
    raise ValueError(f"mapping mode must be 'auto' or one of {', '.join(MAPPING_MODES)}, got {mode!r}")


def _mapped_miou(counts: np.ndarray, mapping: np.ndarray) -> float:
    """mIoU (nan-mean over classes in gt or prediction) of ``counts`` under ``mapping``; -1 when undefined."""
    confusion = apply_mapping(counts, mapping)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else -1.0


def apply_mapping(
    matrix: np.ndarray | ConfusionMatrix, mapping: np.ndarray | Sequence[int], n_classes: int | None = None
) -> np.ndarray:
    """Cluster confusion ``[pred, gt]`` -> class confusion ``[pred_class, gt]`` (n_classes, n_gt).

    Clusters mapped to the same class are summed. ``n_classes`` defaults to ``n_gt``. The mapping may come from
    another split than ``matrix`` (fit on a calibration split, score a test split).

    Example:
        >>> apply_mapping(np.array([[5, 1], [0, 3], [4, 0]]), [0, 1, 0]).tolist()
        [[9, 1], [0, 3]]
    """
    counts = _as_counts(matrix)
    n_pred, n_gt = counts.shape
    n_classes = n_gt if n_classes is None else int(n_classes)
    mapping = np.asarray(mapping)
    if mapping.shape != (n_pred,) or mapping.dtype.kind not in "iu":
        raise ValueError(f"mapping must be an integer array of shape ({n_pred},), got {mapping.dtype} {mapping.shape}")
    if mapping.size and (mapping.min() < 0 or mapping.max() >= n_classes):
        raise ValueError(f"mapping values must lie in [0, {n_classes}), got [{mapping.min()}, {mapping.max()}]")
    out = np.zeros((n_classes, n_gt), dtype=counts.dtype)
    np.add.at(out, mapping, counts)  # out[mapping[p]] += counts[p]
    return out


@dataclass(frozen=True, eq=False)
class SegmentationScores:
    """Scores of a class confusion ``[pred, gt]``; fractions in [0, 1], NaN where undefined.

    Per-class arrays are indexed by class id. IoU, precision, recall and F1 of a class are NaN when their
    denominator is 0 (IoU and F1: the class is absent from both gt and prediction; precision: never predicted;
    recall: absent from gt). ``miou`` / ``defect_iou`` / ``defect_f1`` are NaN-means over all classes / all
    classes but ``background`` ("defect IoU" is the mean IoU over the defect classes). ``binary_defect_iou`` merges
    the defect classes into one against ``background`` (a defect found but given the wrong defect class counts as
    found); NaN without a background class or when no pixel is or is predicted a defect.
    """

    pixel_accuracy: float
    miou: float
    iou: np.ndarray  # (n_classes,)
    precision: np.ndarray  # (n_classes,) tp / (tp + fp)
    recall: np.ndarray  # (n_classes,) tp / (tp + fn)
    f1: np.ndarray  # (n_classes,) 2 tp / (2 tp + fp + fn)
    defect_iou: float
    defect_f1: float
    binary_defect_iou: float
    confusion: np.ndarray  # (n_classes, n_classes) [pred_class, gt]
    class_names: tuple[str, ...]
    background: int | None = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict: Python floats and ints, NaN as None, per-class scores keyed by class name."""
        gt_pixels, pred_pixels = self.confusion.sum(axis=0), self.confusion.sum(axis=1)
        per_class = {
            name: {
                "iou": _json_float(self.iou[c]),
                "precision": _json_float(self.precision[c]),
                "recall": _json_float(self.recall[c]),
                "f1": _json_float(self.f1[c]),
                "gt_pixels": _json_number(gt_pixels[c]),
                "pred_pixels": _json_number(pred_pixels[c]),
            }
            for c, name in enumerate(self.class_names)
        }
        return {
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "miou": _json_float(self.miou),
            "defect_iou": _json_float(self.defect_iou),
            "defect_f1": _json_float(self.defect_f1),
            "binary_defect_iou": _json_float(self.binary_defect_iou),
            "background": None if self.background is None else self.class_names[self.background],
            "class_names": list(self.class_names),
            "per_class": per_class,
            "confusion": [[_json_number(v) for v in row] for row in self.confusion],
        }


def segmentation_scores(
    class_confusion: np.ndarray,
    class_names: Sequence[str] | None = None,
    background: int | None = 0,
) -> SegmentationScores:
    """Pixel accuracy, per-class IoU / precision / recall / F1, mIoU and defect means of ``[pred_class, gt]``.

    ``background`` is the class left out of ``defect_iou`` / ``defect_f1`` (None: no background class, the
    defect means run over every class). Class names default to ``class_0, class_1, ...``.

    Example:
        >>> s = segmentation_scores(np.array([[8, 1], [0, 1]]), class_names=["ok", "crack"])
        >>> s.pixel_accuracy, s.iou.tolist(), s.defect_iou
        (0.9, [0.8888888888888888, 0.5], 0.5)
    """
    confusion = _as_counts(class_confusion)
    n = confusion.shape[0]
    if confusion.shape != (n, n):
        raise ValueError(f"class confusion must be square [pred_class, gt], got shape {confusion.shape}")
    names = _class_names(class_names, n)
    if background is not None and not 0 <= background < n:
        raise ValueError(f"background must be a class id in [0, {n}) or None, got {background}")
    tp = np.diag(confusion).astype(np.float64)
    pred_total = confusion.sum(axis=1).astype(np.float64)
    gt_total = confusion.sum(axis=0).astype(np.float64)
    iou = _safe_divide(tp, pred_total + gt_total - tp)
    f1 = _safe_divide(2 * tp, pred_total + gt_total)
    defect = np.ones(n, dtype=bool)
    if background is not None:
        defect[background] = False
    readonly = [_readonly(a) for a in (iou, _safe_divide(tp, pred_total), _safe_divide(tp, gt_total), f1)]
    return SegmentationScores(
        pixel_accuracy=float(_safe_divide(tp.sum(), gt_total.sum())),
        miou=_nanmean(iou),
        iou=readonly[0],
        precision=readonly[1],
        recall=readonly[2],
        f1=readonly[3],
        defect_iou=_nanmean(iou[defect]),
        defect_f1=_nanmean(f1[defect]),
        binary_defect_iou=_binary_defect_iou(confusion, defect) if background is not None else float("nan"),
        confusion=_readonly(confusion.copy()),
        class_names=names,
        background=background,
    )


def _binary_defect_iou(confusion: np.ndarray, defect: np.ndarray) -> float:
    """IoU of "some defect class" in prediction and ground truth; ``defect`` is a (n,) bool mask of the classes."""
    both = float(confusion[np.ix_(defect, defect)].sum())
    union = float(confusion[defect].sum() + confusion[:, defect].sum()) - both
    return both / union if union > 0 else float("nan")


def evaluate_clusters(
    matrix: np.ndarray | ConfusionMatrix,
    mode: Literal["auto", "hungarian", "many_to_one", "miou"] = "hungarian",
    class_names: Sequence[str] | None = None,
    background: int | None = 0,
) -> tuple[np.ndarray, SegmentationScores]:
    """Fit a cluster -> class mapping on ``matrix`` ``[pred, gt]`` and score it on the same pixels.

    This is IIC's "IID" protocol (mapping fitted on the evaluation data itself) with ``mode="hungarian"``; ``mode``
    is any of :func:`fit_mapping`'s. To score a held-out split instead, fit with :func:`fit_mapping` on one matrix
    and pass ``apply_mapping(other, mapping)`` to :func:`segmentation_scores`.

    Example:
        >>> mapping, scores = evaluate_clusters(np.array([[1, 9], [8, 2]]))
        >>> mapping.tolist(), scores.pixel_accuracy
        ([1, 0], 0.85)
    """
    counts = _as_counts(matrix)
    mapping, mode = fit_mapping(counts, mode)
    class_confusion = apply_mapping(counts, mapping, counts.shape[1])
    scores = segmentation_scores(class_confusion, class_names=class_names, background=background)
    log.debug("evaluate_clusters(%s): mapping %s, pixel accuracy %.4f", mode, mapping.tolist(), scores.pixel_accuracy)
    return mapping, scores


def _as_counts(matrix: np.ndarray | ConfusionMatrix) -> np.ndarray:
    """A 2-D array of non-negative counts: int64 for integer input, float64 for float input (e.g. IIC's)."""
    if isinstance(matrix, ConfusionMatrix):
        return np.array(matrix.matrix)
    counts = np.asarray(matrix)
    if counts.ndim != 2 or 0 in counts.shape:
        raise ValueError(f"confusion matrix must be a non-empty 2-D [pred, gt] array, got shape {counts.shape}")
    if counts.dtype.kind in _INTEGER_KINDS:
        counts = counts.astype(np.int64)
    elif counts.dtype.kind == "f":
        counts = counts.astype(np.float64)
        if not np.isfinite(counts).all():
            raise ValueError("confusion matrix holds NaN or infinite values")
    else:
        raise ValueError(f"confusion matrix must hold integer or float counts, got dtype {counts.dtype}")
    if (counts < 0).any():
        raise ValueError("confusion matrix holds negative counts")
    return counts


def _class_names(class_names: Sequence[str] | None, n: int) -> tuple[str, ...]:
    if class_names is None:
        return tuple(f"class_{c}" for c in range(n))
    names = tuple(class_names)
    if len(names) != n or len(set(names)) != n or not all(isinstance(s, str) and s for s in names):
        raise ValueError(f"class_names must be {n} distinct non-empty strings, got {list(names)}")
    return names


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0, without a RuntimeWarning."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN values; NaN (without a warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _json_float(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _json_number(x: np.generic) -> int | float:
    return int(x) if np.issubdtype(type(x), np.integer) else float(x)
