"""IIC's geometric transforms against the official code (iic_perform_affine_tf / random_affine /
random_translation_multiple fixtures) and the batched paired-view generator's inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data.geometric import (
    AffineRange,
    affine_from_params,
    horizontal_flip_affine,
    identity_affine,
    paired_view,
    perform_affine_tf,
    random_affine,
    random_translation_multiple,
)


@pytest.mark.parametrize("align_corners", [False, True])
def test_perform_affine_tf_matches_official(parity, align_corners):
    d = parity("iic_perform_affine_tf")
    out = perform_affine_tf(torch.tensor(d["data"]), torch.tensor(d["tf_matrices"]), align_corners=align_corners)
    expected = d["expected_aligncorners_true" if align_corners else "expected_aligncorners_false"]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_flip_matrix_is_an_exact_flip(parity, align_corners):
    d = parity("iic_perform_affine_tf")
    data = torch.tensor(d["data"])
    out = perform_affine_tf(data, torch.tensor(d["flip_matrices"]), align_corners=align_corners)
    np.testing.assert_allclose(out.numpy(), d["expected_flip"], rtol=0, atol=1e-12)
    assert torch.allclose(out, data.flip(-1), atol=1e-12)
    assert torch.allclose(perform_affine_tf(data, horizontal_flip_affine(2, data.dtype)), data.flip(-1), atol=1e-12)


def test_random_affine_matches_official(parity):
    d = parity("iic_random_affine")
    np.random.seed(int(d["np_seed"]))
    img, a1to2, a2to1 = random_affine(torch.tensor(d["img"]), *d["rot_range"], *d["shear_range"], *d["scale_range"])
    np.testing.assert_array_equal(a1to2.numpy(), d["expected_affine1_to_2"])
    np.testing.assert_array_equal(a2to1.numpy(), d["expected_affine2_to_1"])
    np.testing.assert_allclose(img.numpy(), d["expected_img"], rtol=0, atol=1e-6)
    np.random.seed(int(d["np_seed"]))
    np.testing.assert_array_equal(np.random.rand(3), d["uniforms"])  # three draws: rot, shear, scale


def test_random_translation_multiple_matches_official(parity):
    d = parity("iic_random_translation_multiple")
    data = torch.tensor(d["data"])
    for i, seed in enumerate(d["seeds"]):
        np.random.seed(int(seed))
        out, shift = random_translation_multiple(data, int(d["half_side_min"][i]), int(d["half_side_max"][i]))
        assert list(shift) == d["expected_shift_xy"][i].tolist()
        np.testing.assert_array_equal(out.numpy(), d["expected"][i])


def test_affine_from_params_matches_official_formula_and_inverts():
    rot, shear, scale = (torch.tensor(v, dtype=torch.float64) for v in ([3.05, -20.0], [4.2, 7.0], [0.9, 1.1]))
    a1to2, a2to1 = affine_from_params(rot, shear, scale)
    a, sh = np.radians(-20.0), np.radians(7.0)
    expected = np.array([[np.cos(a) * 1.1, -np.sin(a + sh) * 1.1, 0], [np.sin(a) * 1.1, np.cos(a + sh) * 1.1, 0]])
    np.testing.assert_allclose(a1to2[1].numpy(), expected, rtol=1e-12)
    prod = a1to2[:, :, :2] @ a2to1[:, :, :2]
    assert torch.allclose(prod, torch.eye(2, dtype=prod.dtype).expand(2, 2, 2), atol=1e-12)


def test_paired_view_flip_is_undone_exactly_by_its_affine():
    x = torch.rand(6, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    view2, a2to1 = paired_view(x, flip_p=1.0)
    assert torch.equal(view2, x.flip(-1))
    assert torch.allclose(perform_affine_tf(view2, a2to1), x, atol=1e-6)
    view2, a2to1 = paired_view(x, flip_p=0.0)
    assert torch.equal(view2, x) and torch.equal(a2to1, identity_affine(6))


def test_paired_view_flips_about_half_and_unwarps_each_sample():
    torch.manual_seed(0)
    x = torch.rand(200, 1, 6, 6)
    view2, a2to1 = paired_view(x, flip_p=0.5)
    flipped = a2to1[:, 0, 0] < 0
    assert 70 < int(flipped.sum()) < 130
    assert torch.equal(view2[flipped], x[flipped].flip(-1)) and torch.equal(view2[~flipped], x[~flipped])
    assert torch.allclose(perform_affine_tf(view2, a2to1), x, atol=1e-6)


def test_paired_view_affine_is_inverted_by_affine2_to_1():
    # a smooth image, so that bilinear resampling twice stays close to the original away from the border
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    img = (torch.sin(2.0 * xx) * torch.cos(1.5 * yy)).expand(4, 1, 48, 48).contiguous().double()
    view2, a2to1 = paired_view(img, flip_p=0.5, affine=AffineRange(), generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(view2, img, atol=1e-2)
    back = perform_affine_tf(view2, a2to1)
    centre = (slice(None), slice(None), slice(16, 32), slice(16, 32))
    assert torch.allclose(back[centre], img[centre], atol=0.02)


def test_paired_view_draws_from_the_global_torch_rng():
    x = torch.rand(5, 1, 8, 8)
    torch.manual_seed(123)
    a = paired_view(x, affine=AffineRange())
    torch.manual_seed(123)
    b = paired_view(x, affine=AffineRange())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="flip_p"):
        paired_view(torch.rand(2, 1, 4, 4), flip_p=1.5)
    with pytest.raises(ValueError, match=r"\(B, 2, 3\)"):
        perform_affine_tf(torch.rand(2, 1, 4, 4), torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match=r"AffineRange\.rot"):
        AffineRange(rot=(10.0, -10.0))
    with pytest.raises(ValueError, match="half_side_min"):
        random_translation_multiple(torch.rand(1, 1, 4, 4), 3, 1)
