"""Deep InfoMax's estimators against the official outputs, and InfoSeg's per-location objective."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.losses.infomax import (
    MEASURES,
    fenchel_dual_loss,
    infonce_loss,
    infoseg_loss,
    location_mi_estimate,
    negative_expectation,
    positive_expectation,
)

RTOL = 1e-10


def _close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), expected, rtol=RTOL, atol=1e-13)


@pytest.fixture(scope="module")
def dim(parity):
    return parity("dim_local_global_losses")


def _inputs(dim):
    l = torch.tensor(dim["l"], dtype=torch.float64, requires_grad=True)
    m = torch.tensor(dim["m"], dtype=torch.float64, requires_grad=True)
    return l, m


@pytest.mark.parametrize("measure", MEASURES)
def test_fenchel_dual_loss_and_gradients_match_dim(dim, measure):
    l, m = _inputs(dim)
    loss = fenchel_dual_loss(l, m, measure)
    loss.backward()
    _close(loss, dim[f"expected_fenchel_{measure}"])
    _close(l.grad, dim[f"expected_fenchel_{measure}_grad_l"])
    _close(m.grad, dim[f"expected_fenchel_{measure}_grad_m"])


def test_infonce_loss_and_gradients_match_dim(dim):
    l, m = _inputs(dim)
    loss = infonce_loss(l, m)
    loss.backward()
    _close(loss, dim["expected_infonce"])
    _close(l.grad, dim["expected_infonce_grad_l"])
    _close(m.grad, dim["expected_infonce_grad_m"])


def test_jsd_expectation_terms_match_dim(dim):
    scores = torch.tensor(dim["scores"], dtype=torch.float64)
    _close(positive_expectation(scores, "JSD"), dim["expected_pos_JSD"])
    _close(negative_expectation(scores, "JSD"), dim["expected_neg_JSD"])


def test_bad_shapes_and_measures_are_rejected():
    with pytest.raises(ValueError, match="measure must be one of"):
        positive_expectation(torch.zeros(3), "W2")
    with pytest.raises(ValueError, match="N >= 2"):
        fenchel_dual_loss(torch.zeros(1, 4, 5), torch.zeros(1, 4, 1))
    with pytest.raises(ValueError, match="same N and units"):
        infonce_loss(torch.zeros(2, 4, 5), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="need B' >= 2"):
        infoseg_loss(torch.zeros(1, 4, 5), torch.zeros(1, 4, 5))


def _features(b=4, c=6, p=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    local = torch.randn(b, c, p, generator=g, dtype=torch.float64)
    assigned = torch.randn(b, c, p, generator=g, dtype=torch.float64)
    return local, assigned


def _per_location_dim(local, assigned, measure):
    """mean over p of DIM's fenchel_dual_loss on the single location p (the docs/METHODS.md §4.2 identity)."""
    n_loc = local.shape[2]
    return sum(fenchel_dual_loss(local[:, :, p:p + 1], assigned[:, :, p:p + 1], measure) for p in range(n_loc)) / n_loc


def test_infoseg_loss_is_per_location_dim_jsd_plus_2ln2():
    local, assigned = _features()
    expected = _per_location_dim(local, assigned, "JSD") + 2 * math.log(2)
    assert abs(float(infoseg_loss(local, assigned)) - float(expected)) < 1e-12
    # the softplus form of docs/METHODS.md §4.2
    scores = torch.einsum("bcp,dcp->bdp", local, assigned)
    eye = torch.eye(4, dtype=torch.bool)
    softplus_form = F.softplus(-scores[eye]).mean() + F.softplus(scores[~eye]).mean()
    assert abs(float(infoseg_loss(local, assigned)) - float(softplus_form)) < 1e-12


@pytest.mark.parametrize("measure", MEASURES)
def test_location_estimate_is_minus_per_location_dim_loss(measure):
    local, assigned = _features(seed=1)
    local, assigned = 0.3 * local, 0.3 * assigned  # keep exp() terms moderate
    estimate = location_mi_estimate(local, assigned, measure)
    assert abs(float(estimate) + float(_per_location_dim(local, assigned, measure))) < 1e-12


def _brute_force(local, assigned, valid, offset, class_scores=None, class_mask=None):
    """Loops over every (image, image, location) term of the JSD estimate."""
    pos_sum = pos_n = neg_sum = neg_n = 0.0
    for b in range(local.shape[0]):
        for d in range(assigned.shape[0]):
            for p in range(local.shape[2]):
                t = float(local[b, :, p] @ assigned[d, :, p])
                if d == offset + b:
                    w = float(valid[d, p])
                    pos_sum += w * (math.log(2) - math.log1p(math.exp(-t)))
                    pos_n += w
                else:
                    w = float(valid[offset + b, p] * valid[d, p])
                    neg_sum += w * (math.log1p(math.exp(t)) - math.log(2))
                    neg_n += w
    e_neg = neg_sum / neg_n
    if class_scores is not None:
        w = class_mask * valid[offset:offset + local.shape[0], None, :]
        e_cls = float((w * (F.softplus(class_scores) - math.log(2))).sum() / w.sum())
        e_neg = 0.5 * (e_neg + e_cls)
    return pos_sum / pos_n - e_neg


def test_valid_mask_offset_and_class_negatives_match_brute_force():
    local, assigned = _features(b=5, c=3, p=4, seed=2)
    valid = (torch.rand(5, 4, generator=torch.Generator().manual_seed(3)) > 0.3).double()
    valid[:, 0] = 1
    est = location_mi_estimate(local, assigned, valid=valid)
    assert abs(float(est) - _brute_force(local, assigned, valid, 0)) < 1e-12
    # this "rank" holds images 2..3 of the gathered five
    est = location_mi_estimate(local[2:4], assigned, valid=valid, offset=2)
    assert abs(float(est) - _brute_force(local[2:4], assigned, valid, 2)) < 1e-12
    class_scores = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    class_mask = torch.ones(2, 3, 4, dtype=torch.float64)
    class_mask[:, 1] = 0
    est = location_mi_estimate(local[2:4], assigned, valid=valid, offset=2, class_scores=class_scores,
                               class_mask=class_mask)
    expected = _brute_force(local[2:4], assigned, valid, 2, class_scores, class_mask)
    assert abs(float(est) - expected) < 1e-12
    ones = torch.ones(5, 4, dtype=torch.float64)
    assert torch.allclose(location_mi_estimate(local, assigned, valid=ones), location_mi_estimate(local, assigned))


def test_estimate_is_higher_for_matched_than_shuffled_pairs():
    g = torch.Generator().manual_seed(5)
    local = torch.nn.functional.normalize(torch.randn(8, 16, 20, generator=g), dim=1) * 2
    assigned = local + 0.5 * torch.randn(8, 16, 20, generator=g)  # S depends on L at each location
    shuffled = assigned.roll(1, dims=0)  # every image gets another image's S (a derangement)
    matched = float(location_mi_estimate(local, assigned))
    assert matched > 0.3  # positive: the critic tells joint pairs from product-of-marginal pairs
    assert matched > float(location_mi_estimate(local, shuffled)) + 1.0
    independent = float(location_mi_estimate(local, torch.randn(8, 16, 20, generator=g)))
    assert matched > independent
