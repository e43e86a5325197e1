"""PiCIE's clustering losses (Cho et al., CVPR 2021, Sec. 3.2-3.3, Eq. 3-6) as pure functions.

Official: janghyuncho/PiCIE ``train_picie.py::train`` (L113-150), ``commons.py::compute_labels`` (L138-183),
``utils.py::compute_negative_euclidean`` (L125-128). With f̂ the channel-L2-normalised features and c^v the
k-means centroids of view v, z^v(f̂) the logits of the frozen centroid classifier and CE_w the weighted-mean
cross entropy sum(w[y] * -log softmax_y) / sum(w[y]) over all pixels:

    L_within = (CE_w1(z1(f̂1), y1) + CE_w2(z2(f̂2), y2)) / 2
    L_cross  = (CE_w2(z2(f̂1), y2) + CE_w1(z1(f̂2), y1)) / 2
    L        = (L_within + L_cross) / 2                [optional: L <- (L + MSE(f̂1, f̂2)) / 2]

Labels are the nearest centroid in L2 (unnormalised centroids), as k-means assigns. The official logits are the
plain dot product <f̂, c> (``distance_bias=False``), which can disagree with those labels when centroid norms
differ (docs/METHODS.md §P15). ``distance_bias=True`` (our default) adds -||c||^2/2, so that
z = -||f̂ - c||^2/2 + const: the loss, the labels and the predictions then all rank clusters by distance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize_features(feats: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> unit L2 norm over D (``metric='cosine'``, F.normalize eps 1e-12)."""
    return F.normalize(feats, dim=1, p=2)


def cluster_logits(feats_n: torch.Tensor, centroids: torch.Tensor, distance_bias: bool = True) -> torch.Tensor:
    """(B, D, H, W), (K, D) -> (B, K, H, W): <f̂, c_k> (- ||c_k||^2 / 2 with ``distance_bias``)."""
    logits = torch.einsum("bdhw,kd->bkhw", feats_n, centroids.to(feats_n.dtype))
    if distance_bias:
        logits = logits - 0.5 * (centroids.to(feats_n.dtype) ** 2).sum(dim=1).view(1, -1, 1, 1)
    return logits


def negative_sq_distance(feats_n: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) scores -(1 - 2<f̂, c> + ||c||^2) = -||f̂ - c||^2 for unit f̂ (official compute_negative_euclidean)."""
    dots = torch.einsum("bdhw,kd->bkhw", feats_n, centroids.to(feats_n.dtype))
    return -(1 - 2 * dots + (centroids.to(feats_n.dtype) ** 2).sum(dim=1).view(1, -1, 1, 1))


def nearest_centroid_labels(feats_n: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(B, H, W) int64: argmin_k ||f̂ - c_k||^2 (ties -> lowest k)."""
    return negative_sq_distance(feats_n, centroids).argmax(dim=1)


def class_weights(counts: torch.Tensor, proportional: bool = False) -> torch.Tensor:
    """CE class weights from per-cluster pixel counts (K,).

    ``proportional=True`` is the official rule w_k = n_k / sum(n) (docs/METHODS.md §P10: it *up*-weights big
    clusters although the code calls it balancing). The default is the balancing the paper intends, inverse
    frequency w_k = (1 / n_k) / sum_j(1 / n_j) over non-empty clusters; empty clusters get weight 0 (no pixel
    carries their label, so the value never enters the loss).
    """
    counts = counts.to(torch.float64)
    if proportional:
        return (counts / counts.sum().clamp_min(1e-12)).to(torch.float32)
    inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), torch.zeros_like(counts))
    return (inv / inv.sum().clamp_min(1e-300)).to(torch.float32)


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """(B, K, H, W), (B, H, W) -> scalar: sum(w[y] * nll) / sum(w[y]) (``nn.CrossEntropyLoss(weight=w)``)."""
    w = None if weight is None else weight.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, labels, weight=w)


def picie_loss(featmap1: torch.Tensor, featmap2: torch.Tensor, label1: torch.Tensor, label2: torch.Tensor,
               centroids1: torch.Tensor, centroids2: torch.Tensor, weight1: torch.Tensor | None = None,
               weight2: torch.Tensor | None = None, *, mse: bool = False, distance_bias: bool = True
               ) -> dict[str, torch.Tensor]:
    """PiCIE's loss from raw (un-normalised) aligned feature maps (B, D, h, w) of both views.

    ``label*`` (B, h, w) are each view's pseudo-labels; ``centroids*`` (K, D) and ``weight*`` (K,) belong to the
    same view (classifier v is coupled with labels v). Returns ``loss``, ``loss_ce`` (before MSE), ``loss_within``,
    ``loss_cross`` and ``loss_mse`` (0 when ``mse`` is off).
    """
    if featmap1.shape != featmap2.shape:
        raise ValueError(f"the two views' feature maps must align: {tuple(featmap1.shape)} vs {tuple(featmap2.shape)}")
    f1, f2 = normalize_features(featmap1), normalize_features(featmap2)

    def ce(f: torch.Tensor, c: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        return weighted_cross_entropy(cluster_logits(f, c, distance_bias), y, w)

    within = (ce(f1, centroids1, label1, weight1) + ce(f2, centroids2, label2, weight2)) / 2
    cross = (ce(f1, centroids2, label2, weight2) + ce(f2, centroids1, label1, weight1)) / 2
    loss_ce = (within + cross) / 2
    loss_mse = F.mse_loss(f1, f2) if mse else torch.zeros((), dtype=loss_ce.dtype, device=loss_ce.device)
    loss = (loss_ce + loss_mse) / 2 if mse else loss_ce
    return {"loss": loss, "loss_ce": loss_ce, "loss_within": within, "loss_cross": cross, "loss_mse": loss_mse}
