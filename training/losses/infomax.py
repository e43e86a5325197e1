"""Deep InfoMax's mutual-information estimators, and InfoSeg's per-location local/assigned objective.

Deep InfoMax (Hjelm et al., ICLR 2019), official code ``rdevon/DIM @ bac4765`` (BSD-3):
``cortex_DIM/functions/gan_losses.py::get_positive_expectation`` / ``get_negative_expectation`` (L22-97) and
``cortex_DIM/functions/dim_losses.py::fenchel_dual_loss`` (L13-59) / ``infonce_loss`` (L62-106). Reimplemented
clean-room from their published semantics and checked against ``tests/data/parity/dim_local_global_losses.npz``.

The f-divergence ("Fenchel dual") estimators of DIM Eq. 2-4 score pairs with a critic T and contrast
E_P[pos(T)] over joint (positive) pairs with E_Q[neg(T)] over product-of-marginal (negative) pairs; the loss is
``E_neg - E_pos`` (minus the MI lower bound). For ``measure="JSD"``: pos(t) = log 2 - softplus(-t),
neg(t) = softplus(t) - log 2, so the loss is ``mean softplus(-T_pos) + mean softplus(T_neg) - 2 log 2``.

InfoSeg (Harb & Knöbelreiter, GCPR 2021; docs/METHODS.md §4.2) maximises the mean over locations p of
I(L(p); S(p)) with this JSD estimator: positives pair L_b(p) with S_b(p) of the same image, negatives pair it with
S_b'(p) of every other image b' of the batch at the same location. :func:`infoseg_loss` is that objective; it
equals the mean over p of ``fenchel_dual_loss(L[..., p:p+1], S[..., p:p+1], "JSD") + 2 log 2``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEASURES = ("GAN", "JSD", "X2", "KL", "RKL", "H2")
_LOG2 = math.log(2.0)


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")


def positive_expectation(scores: torch.Tensor, measure: str = "JSD") -> torch.Tensor:
    """Elementwise positive-sample term of the f-divergence bound (DIM ``get_positive_expectation``)."""
    _check_measure(measure)
    if measure == "GAN":
        return -F.softplus(-scores)
    if measure == "JSD":
        return _LOG2 - F.softplus(-scores)
    if measure == "X2":
        return scores**2
    if measure == "KL":
        return scores  # f-GAN's KL: T itself, against exp(T - 1) on the negatives
    if measure == "RKL":
        return -torch.exp(-scores)
    return 1.0 - torch.exp(-scores)  # H2


def negative_expectation(scores: torch.Tensor, measure: str = "JSD") -> torch.Tensor:
    """Elementwise negative-sample term of the f-divergence bound (DIM ``get_negative_expectation``)."""
    _check_measure(measure)
    if measure == "GAN":
        # DIM writes softplus(-t) + t; equal to softplus(t), which avoids cancellation for very negative t.
        return F.softplus(scores)
    if measure == "JSD":
        return F.softplus(scores) - _LOG2  # DIM: softplus(-t) + t - log 2 (same value, see GAN)
    if measure == "X2":
        # As DIM, not the textbook Pearson conjugate t + t^2/4. DIM writes sqrt(t^2); |t| is the same value
        # with a finite gradient at t = 0 (sqrt's is NaN there).
        return -0.5 * (scores.abs() + 1.0) ** 2
    if measure == "KL":
        return torch.exp(scores - 1.0)  # f-GAN's KL conjugate exp(t - 1)
    if measure == "RKL":
        return scores - 1.0
    return torch.exp(scores) - 1.0  # H2


def _pair_scores(l: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Critic scores of every (global image, local image) pair: u[a, b, i, j] = <m[a, :, j], l[b, :, i]>."""
    _check_pair_shapes(l, m)
    return torch.einsum("auj,bui->abij", m, l)  # (N, N, n_locals, n_multis)


def _check_pair_shapes(l: torch.Tensor, m: torch.Tensor) -> None:
    if l.dim() != 3 or m.dim() != 3 or l.shape[:2] != m.shape[:2]:
        raise ValueError(f"l must be (N, units, n_locals) and m (N, units, n_multis) with the same N and units; "
                         f"got l {tuple(l.shape)} and m {tuple(m.shape)}")
    if l.shape[0] < 2:
        raise ValueError(f"the estimators need N >= 2 samples (negatives come from other samples), got N={l.shape[0]}")


def fenchel_dual_loss(l: torch.Tensor, m: torch.Tensor, measure: str = "JSD") -> torch.Tensor:
    """DIM's local/multi-global f-divergence loss ``E_neg - E_pos`` (a scalar).

    l: (N, units, n_locals) local features; m: (N, units, n_multis) global features. Positives are the pairs of
    the same sample (all locals x all globals), negatives the pairs of different samples; each sample pair's
    terms are averaged over locals and globals first, then over the positive (resp. negative) sample pairs.
    """
    u = _pair_scores(l, m)  # (N, N, n_locals, n_multis)
    n = u.shape[0]
    e_pos = positive_expectation(u, measure).mean(dim=(2, 3))  # (N, N)
    e_neg = negative_expectation(u, measure).mean(dim=(2, 3))  # (N, N)
    eye = torch.eye(n, dtype=torch.bool, device=u.device)
    return e_neg[~eye].mean() - e_pos[eye].mean()


def infonce_loss(l: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """DIM's multi-global infoNCE loss (a scalar).

    l: (N, units, n_locals); m: (N, units, n_multis). For each local l[b, :, i] and global j, the positive score
    <l[b, :, i], m[b, :, j]> competes in a softmax with the scores of m[b, :, j] against every local of every
    sample: DIM's candidate set. As in DIM, the candidates of the same sample b are not removed but set to the
    score -10 (a shift before the softmax), so they still enter the normaliser with weight exp(-10).
    """
    _check_pair_shapes(l, m)
    n, _, n_locals = l.shape
    n_multis = m.shape[2]
    pos = torch.einsum("bui,buj->bij", l, m).unsqueeze(2)  # (N, n_locals, 1, n_multis)
    neg = _pair_scores(l, m)  # (N, N, n_locals, n_multis): [global sample a, local sample b, i, j]
    same = torch.eye(n, dtype=torch.bool, device=l.device)[:, :, None, None]
    neg = neg.masked_fill(same, -10.0)  # DIM: n_mask * u - 10 * (1 - n_mask)
    neg = neg.reshape(n, 1, n * n_locals, n_multis).expand(n, n_locals, n * n_locals, n_multis)
    logits = torch.cat([pos, neg], dim=2)  # (N, n_locals, 1 + N * n_locals, n_multis)
    return -F.log_softmax(logits, dim=2)[:, :, 0].mean()


def location_scores(local: torch.Tensor, assigned: torch.Tensor) -> torch.Tensor:
    """Dot-product critic at each location for every image pair: T[b, d, p] = <local[b, :, p], assigned[d, :, p]>.

    local: (B, C, P); assigned: (B', C, P) -> (B, B', P). With B' = B the diagonal holds the positives.
    """
    if local.dim() != 3 or assigned.dim() != 3 or local.shape[1:] != assigned.shape[1:]:
        raise ValueError(f"local and assigned must be (B, C, P) with the same C and P; got {tuple(local.shape)} "
                         f"and {tuple(assigned.shape)}")
    return torch.einsum("bcp,dcp->bdp", local, assigned)


def location_mi_estimate(
    local: torch.Tensor,
    assigned: torch.Tensor,
    measure: str = "JSD",
    valid: torch.Tensor | None = None,
    class_scores: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """InfoSeg's bound on mean_p I(L(p); S(p)): E_pos - E_neg with same-location negatives (docs/METHODS.md §4.2).

    local: (B, C, P); assigned: (B', C, P), B' >= 2. The positive of local[b] is assigned[offset + b]; every other
    image of ``assigned`` at the same location is a negative. B' = B, offset 0 is one batch; B' > B holds S
    gathered from several ranks, ``offset`` this rank's first image.
    valid: optional (B', P) 0/1 weights of the locations that count (the ``iic_train_mask`` variant), indexed like
        ``assigned``: a positive counts when its location is valid, a negative when both images' locations are.
    class_scores, class_mask: optional (B, K, P) scores <L_b(p), H_b[k]> of the same image's class features and a
        0/1 mask of the ones that are negatives (k != seg_b(p)). They form a second negative distribution; E_neg is
        then the even mixture of the batch negatives' mean and the class negatives' mean.
    """
    scores = location_scores(local, assigned)  # (B, B', P)
    b, b_all, n_loc = scores.shape
    if b_all < 2 or not 0 <= offset <= b_all - b:
        raise ValueError(f"InfoSeg's negatives come from other images: need B' >= 2 assigned maps and "
                         f"0 <= offset <= B' - B; got B={b}, B'={b_all}, offset={offset}")
    if valid is None:
        valid = scores.new_ones(b_all, n_loc)  # (B', P)
    pos = torch.zeros(b, b_all, dtype=scores.dtype, device=scores.device)
    pos[torch.arange(b), offset + torch.arange(b)] = 1.0  # (B, B')
    valid_local = valid[offset:offset + b]  # (B, P)
    w_pos = pos[:, :, None] * valid_local[:, None, :]  # (B, B', P)
    w_neg = (1 - pos)[:, :, None] * valid_local[:, None, :] * valid[None, :, :]  # (B, B', P)
    e_pos = _weighted_mean(positive_expectation(scores, measure), w_pos)
    e_neg = _weighted_mean(negative_expectation(scores, measure), w_neg)
    if class_scores is not None:
        if class_mask is None or class_mask.shape != class_scores.shape:
            raise ValueError("class_scores needs a class_mask of the same shape (B, K, P)")
        w_cls = class_mask * valid_local[:, None, :]  # (B, K, P)
        e_neg = 0.5 * (e_neg + _weighted_mean(negative_expectation(class_scores, measure), w_cls))
    return e_pos - e_neg


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # clamp: an all-masked batch gives 0 rather than NaN (the term then carries no gradient)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def infoseg_loss(
    local: torch.Tensor,
    assigned: torch.Tensor,
    measure: str = "JSD",
    valid: torch.Tensor | None = None,
    class_scores: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """InfoSeg's loss (docs/METHODS.md §4.2): minus :func:`location_mi_estimate`, plus 2 log 2 for JSD.

    For JSD this is ``mean_{b,p} softplus(-T[b,b,p]) + mean_{b!=b',p} softplus(T[b,b',p])`` (>= 0); the constant
    only shifts the logged value. local, assigned: (B, C, P); see :func:`location_mi_estimate` for the options.
    """
    estimate = location_mi_estimate(local, assigned, measure, valid, class_scores, class_mask, offset)
    offset = 2 * _LOG2 if measure == "JSD" else 0.0
    return offset - estimate
