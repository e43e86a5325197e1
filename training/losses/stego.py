"""STEGO's correlation-distillation loss (Hamilton et al., "Unsupervised Semantic Segmentation by Distilling
Feature Correspondences", ICLR 2022, Sec. 3, Eq. 3-4) as pure functions; docs/METHODS.md §8.

For one pair of images with frozen features f (points i of image a, j of image b) and head codes s:

    F_ij = cos(f_a,i, f_b,j),  centred per row:  F_ij <- F_ij - mean_j F_ij + mean_all F   (no gradient)
    S_ij = cos(s_a,i, s_b,j)
    L(a, b; b_shift) = - mean_ij (F_ij - b_shift) * max(S_ij, 0)

Centring: the paper's Eq. 3 has no centring; the official code (``ContrastiveCorrelationLoss.helper`` with
``pointwise: True``, its default) subtracts each row's mean over the partner's points and adds back the mean over
the whole batch tensor, so that a point whose features resemble everything in the partner image pulls nothing
more than one that resembles little. ``max(S, 0)`` is the paper's zero clamp (a code pair already dissimilar is
not pushed further apart). The mean over the batch of ``mean_all F`` is the official one (over every pair of
the batch at once), so a term's centring sees the whole batch, not one image pair.

The training loss sums three such terms with weights: the image with itself (shift b_self), with one of its k
nearest-neighbour images (b_knn) and with random images (b_rand).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-10  # F.normalize's eps in the official code


def cosine_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, M, D) -> (B, N, M): cosine similarity of every point of ``a`` with every point of ``b``."""
    return torch.einsum("bnd,bmd->bnm", F.normalize(a, dim=-1, eps=_EPS), F.normalize(b, dim=-1, eps=_EPS))


def centred_feature_correlation(feats_a: torch.Tensor, feats_b: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, M, D) frozen features -> (B, N, M): cosine correlation, each row's mean removed and the
    whole tensor's mean added back (the official ``pointwise`` centring). No gradient."""
    with torch.no_grad():
        corr = cosine_correlation(feats_a, feats_b)  # (B, N, M)
        return corr - corr.mean(dim=2, keepdim=True) + corr.mean()


def correlation_term(feats_a: torch.Tensor, feats_b: torch.Tensor, codes_a: torch.Tensor, codes_b: torch.Tensor,
                     shift: float) -> torch.Tensor:
    """One term of the loss, a scalar: -mean((F - shift) * max(S, 0)) over the batch and every point pair.

    feats_* (B, N|M, D) frozen features, codes_* (B, N|M, E) head outputs at the same points."""
    target = centred_feature_correlation(feats_a, feats_b) - shift  # (B, N, M)
    return -(target * cosine_correlation(codes_a, codes_b).clamp_min(0)).mean()
