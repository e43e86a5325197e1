"""IIC's MI losses against the official code's numbers (tests/data/parity/iic_*loss*.npz) and by their properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.losses.mutual_info import (
    DEFAULT_JOINT,
    JOINT_IMPLS,
    displaced_joint,
    iic_cluster_joint,
    iic_cluster_loss,
    iic_seg_loss,
    iic_seg_loss_with_affine,
)

CASES = ["basic", "dense", "flip", "affine", "sparse", "allmask"]
SEG_FIXTURES = [f"iic_seg_loss_{c}" for c in CASES] + [f"iic_seg_loss_uncollapsed_{c}" for c in CASES]


def _rel(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300))


def _official_call(d: dict, dtype: torch.dtype, joint: str | None = None, align_corners: bool = False):
    """Run the wrapper as the fixture's harness ran the official function; returns losses and input grads."""
    x1 = torch.tensor(d["x1_outs"], dtype=dtype, requires_grad=True)
    x2 = torch.tensor(d["x2_outs"], dtype=dtype, requires_grad=True)
    np.random.seed(int(d["np_seed"]))
    loss, loss_no_lamb = iic_seg_loss_with_affine(
        x1, x2, torch.tensor(d["all_affine2_to_1"]), mask=torch.tensor(d["all_mask_img1"]), lamb=float(d["lamb"]),
        half_T=int(d["half_T_side_dense"]), sparse_min=int(d["half_T_side_sparse_min"]),
        sparse_max=int(d["half_T_side_sparse_max"]), uncollapsed="uncollapsed" in d["_name"],
        align_corners=align_corners, joint=joint)
    loss.backward()
    return float(loss.detach()), float(loss_no_lamb.detach()), x1.grad.numpy(), x2.grad.numpy()


@pytest.fixture
def seg(parity):
    def load(name: str) -> dict:
        d = parity(name)
        d["_name"] = name
        return d

    return load


@pytest.mark.parametrize("align_corners", [False, True], ids=["ac_false", "ac_true"])
@pytest.mark.parametrize("joint", JOINT_IMPLS)
@pytest.mark.parametrize("name", SEG_FIXTURES)
def test_seg_loss_float64_matches_official(seg, name, joint, align_corners):
    d = seg(name)
    loss, loss_no_lamb, g1, g2 = _official_call(d, torch.float64, joint, align_corners)
    sfx = "_aligncorners_true" if align_corners else ""
    expected = {"loss": d["expected_loss" + sfx], "loss_no_lamb": d["expected_loss_no_lamb" + sfx],
                "grad_x1": d["expected_grad_x1" + sfx], "grad_x2": d["expected_grad_x2" + sfx]}
    got = {"loss": loss, "loss_no_lamb": loss_no_lamb, "grad_x1": g1, "grad_x2": g2}
    if name == "iic_seg_loss_uncollapsed_allmask":  # the official NaN: shifts without unmasked overlap are 0/0
        for key, value in expected.items():
            assert np.isnan(value).all() and np.isnan(got[key]).all(), key
        return
    for key, value in expected.items():
        assert np.isfinite(got[key]).all(), key
        assert _rel(got[key], value) < 1e-10, key


@pytest.mark.parametrize("name", SEG_FIXTURES)
def test_seg_loss_float32_matches_official(seg, name):
    d = seg(name)
    loss, loss_no_lamb, _, _ = _official_call(d, torch.float32)
    if "uncollapsed_allmask" in name:
        assert math.isnan(loss) and math.isnan(d["expected_loss_f32"])
        return
    assert _rel(loss, d["expected_loss_f32"]) < 1e-5
    assert _rel(loss_no_lamb, d["expected_loss_no_lamb_f32"]) < 1e-5


def test_default_joint_is_a_known_implementation():
    assert DEFAULT_JOINT in JOINT_IMPLS


@pytest.mark.parametrize("shape,half_T", [((2, 3, 7, 9), 2), ((1, 4, 5, 6), 6), ((3, 2, 4, 4), 0)])
def test_joint_implementations_agree(shape, half_T):
    g = torch.Generator().manual_seed(0)
    p1 = torch.rand(shape, generator=g, dtype=torch.float64).softmax(1)
    p2 = torch.rand(shape, generator=g, dtype=torch.float64).softmax(1)
    p1[0, :, :2] = 0  # a blank band, so that some long shifts see no mass
    ref = displaced_joint(p1, p2, half_T, "loop")
    assert ref.shape == (2 * half_T + 1, 2 * half_T + 1, shape[1], shape[1])
    for impl in ("conv", "fft"):
        out = displaced_joint(p1, p2, half_T, impl)
        assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12), impl
        assert torch.equal(out == 0, ref == 0), impl  # empty shifts are exactly zero in every implementation


def test_joint_definition_by_hand():
    p1 = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    p2 = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    p1[0, 0, 1, 2] = 1.0  # class 0 at (y=1, x=2) in view 1
    p2[0, 1, 0, 1] = 1.0  # class 1 at (y=0, x=1) in view 2
    for impl in JOINT_IMPLS:
        j = displaced_joint(p1, p2, 1, impl)  # J_s[i, j] = Σ p1[i, y+sy, x+sx] p2[j, y, x]
        assert j[1 + 1, 1 + 1, 0, 1] == pytest.approx(1.0), impl  # s = (1, 1)
        assert float(j.sum()) == pytest.approx(1.0), impl


# -- properties -------------------------------------------------------------------------------------------------
def _one_hot_maps(n_clusters: int, b: int = 2, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_clusters, (b, h, w), generator=g)
    return torch.nn.functional.one_hot(labels, n_clusters).permute(0, 3, 1, 2).double()


@pytest.mark.parametrize("uncollapsed", [True, False])
def test_mi_of_identical_balanced_one_hot_maps_is_log_k(uncollapsed):
    k = 4
    labels = torch.arange(64).view(1, 8, 8) % k  # every cluster equally frequent
    p = torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).double()
    loss, loss_no_lamb = iic_seg_loss(p, p.clone(), half_T=0, uncollapsed=uncollapsed)
    assert float(loss) == pytest.approx(-math.log(k), rel=1e-12)
    assert float(loss_no_lamb) == pytest.approx(-math.log(k), rel=1e-12)


def test_mi_of_independent_maps_is_about_zero():
    p1 = _one_hot_maps(3, b=4, h=64, w=64, seed=1)
    p2 = _one_hot_maps(3, b=4, h=64, w=64, seed=2)
    loss, _ = iic_seg_loss(p1, p2, half_T=2)
    assert abs(float(loss)) < 5e-3
    same, _ = iic_seg_loss(p1, p1.clone(), half_T=0)
    assert float(same) < -1.0  # and far from zero for dependent maps (log 3 = 1.10)


@pytest.mark.parametrize("uncollapsed", [True, False])
def test_loss_is_invariant_to_a_consistent_cluster_permutation(uncollapsed):
    g = torch.Generator().manual_seed(3)
    p1 = torch.rand(2, 5, 9, 7, generator=g, dtype=torch.float64).softmax(1)
    p2 = (p1 + 0.3 * torch.rand(2, 5, 9, 7, generator=g, dtype=torch.float64)).softmax(1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = iic_seg_loss(p1, p2, lamb=1.5, half_T=2, uncollapsed=uncollapsed)
    b = iic_seg_loss(p1[:, perm], p2[:, perm], lamb=1.5, half_T=2, uncollapsed=uncollapsed)
    assert float(a[0]) == pytest.approx(float(b[0]), rel=1e-12)
    assert float(a[1]) == pytest.approx(float(b[1]), rel=1e-12)


def test_lambda_weights_the_marginal_entropies():
    balanced = torch.nn.functional.one_hot(torch.arange(16).view(1, 4, 4) % 2, 2).permute(0, 3, 1, 2).double()
    skewed = torch.nn.functional.one_hot((torch.arange(16).view(1, 4, 4) < 3).long(), 2).permute(0, 3, 1, 2).double()
    for p in (balanced, skewed):
        loss, no_lamb = iic_seg_loss(p, p.clone(), lamb=1.5, half_T=0)
        entropy = -float(no_lamb)  # MI of identical maps = H(marginal)
        assert float(loss) == pytest.approx(-2.0 * entropy, rel=1e-10)  # λ adds (λ-1)(H(p_i) + H(p_j))


# -- the NaN quirk and skip_empty_shifts --------------------------------------------------------------------------
def test_skip_empty_shifts_averages_over_the_overlapping_shifts(parity):
    d = parity("iic_seg_loss_uncollapsed_allmask")  # one unmasked pixel: only s = 0 overlaps
    p1 = torch.tensor(d["x1_outs"], dtype=torch.float64, requires_grad=True)
    p2 = torch.tensor(d["x2_outs"], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(d["all_mask_img1"])
    stats: dict = {}
    loss, _ = iic_seg_loss(p1, p2, lamb=2.0, half_T=2, mask=mask, skip_empty_shifts=True, stats=stats)
    loss.backward()
    assert stats == {"skipped_shifts": 24, "n_shifts": 25}
    only_zero_shift, _ = iic_seg_loss(p1, p2, lamb=2.0, half_T=0, mask=mask)
    assert float(loss.detach()) == pytest.approx(float(only_zero_shift.detach()), rel=1e-12)
    assert torch.isfinite(p1.grad).all() and torch.isfinite(p2.grad).all()
    assert p1.grad.abs().sum() > 0
    nan_loss, _ = iic_seg_loss(p1, p2, lamb=2.0, half_T=2, mask=mask)  # the official default
    assert math.isnan(float(nan_loss.detach()))


@pytest.mark.parametrize("uncollapsed", [True, False])
def test_fully_masked_batch_gives_zero_loss_with_skip(uncollapsed):
    p = torch.rand(2, 3, 5, 5, dtype=torch.float64).softmax(1).requires_grad_(True)
    loss, _ = iic_seg_loss(p, p.detach().clone(), half_T=1, mask=torch.zeros(2, 5, 5), uncollapsed=uncollapsed,
                           skip_empty_shifts=True)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(p.grad, torch.zeros_like(p))


# -- distributed reduction --------------------------------------------------------------------------------------
@pytest.mark.parametrize("uncollapsed", [True, False])
def test_reduce_hook_makes_two_half_batches_equal_the_full_batch(uncollapsed):
    g = torch.Generator().manual_seed(7)
    p1 = torch.rand(4, 3, 6, 6, generator=g, dtype=torch.float64).softmax(1).requires_grad_(True)
    p2 = (p1.detach() + 0.5 * torch.rand(4, 3, 6, 6, generator=g, dtype=torch.float64)).softmax(1)
    p2.requires_grad_(True)
    mask = (torch.rand(4, 6, 6, generator=g) > 0.2).double()
    kw = {"lamb": 1.5, "half_T": 2, "uncollapsed": uncollapsed}
    full, full_no_lamb = iic_seg_loss(p1, p2, mask=mask, **kw)
    g1, g2 = torch.autograd.grad(full, (p1, p2))

    # "rank 1" computes its joint; "rank 0" sums it into its own, as a differentiable all-reduce would
    other: list[torch.Tensor] = []
    iic_seg_loss(p1[2:], p2[2:], mask=mask[2:], reduce=lambda j: other.append(j) or j, **kw)
    split, split_no_lamb = iic_seg_loss(p1[:2], p2[:2], mask=mask[:2], reduce=lambda j: j + other[0], **kw)
    s1, s2 = torch.autograd.grad(split, (p1, p2))
    assert float(split.detach()) == pytest.approx(float(full.detach()), rel=1e-12)
    assert float(split_no_lamb.detach()) == pytest.approx(float(full_no_lamb.detach()), rel=1e-12)
    assert torch.allclose(s1, g1, rtol=1e-10, atol=1e-14) and torch.allclose(s2, g2, rtol=1e-10, atol=1e-14)


# -- input errors -----------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    p = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="same shape"):
        iic_seg_loss(p, torch.rand(2, 3, 4, 5))
    with pytest.raises(ValueError, match="mask must be"):
        iic_seg_loss(p, p, mask=torch.ones(2, 4, 5))
    with pytest.raises(ValueError, match="unknown joint"):
        iic_seg_loss(p, p, joint="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="half_T"):
        iic_seg_loss(p, p, half_T=-1)
    with pytest.raises(ValueError, match="one dtype"):
        iic_seg_loss(p, p.double())


# -- the clustering loss ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["iic_cluster_loss_lamb1p0", "iic_cluster_loss_lamb1p5"])
def test_cluster_loss_matches_official(parity, name):
    d = parity(name)
    x, y = torch.tensor(d["x_out"], dtype=torch.float64), torch.tensor(d["x_tf_out"], dtype=torch.float64)
    loss, loss_no_lamb = iic_cluster_loss(x, y, lamb=float(d["lamb"]))
    assert _rel(float(loss), d["expected_loss"]) < 1e-10
    assert _rel(float(loss_no_lamb), d["expected_loss_no_lamb"]) < 1e-10
    assert _rel(iic_cluster_joint(x, y).numpy(), d["expected_p_i_j"]) < 1e-10
    loss32, _ = iic_cluster_loss(torch.tensor(d["x_out"]), torch.tensor(d["x_tf_out"]), lamb=float(d["lamb"]))
    assert _rel(float(loss32), d["expected_loss_f32"]) < 1e-5


def test_cluster_loss_is_differentiable_and_its_gradient_is_right(parity):
    d = parity("iic_cluster_loss_lamb1p5")
    x = torch.tensor(d["x_out"], dtype=torch.float64, requires_grad=True)
    y = torch.tensor(d["x_tf_out"], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: iic_cluster_loss(a, b, lamb=1.5)[0], (x, y))
