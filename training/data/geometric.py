"""Geometric transforms of IIC's paired views, and their inverses for the loss.

Official code (MIT): github.com/xu-ji/IIC, ``code/utils/segmentation/transforms.py`` (``random_affine`` L91-128,
``perform_affine_tf`` L131-143, ``random_translation_multiple`` L146-166) and the pair construction of
``code/datasets/segmentation/cocostuff.py`` L104-229 (docs/METHODS.md §2.6 items 7-8).

Convention: an affine ``A`` (B, 2, 3) acts on normalised [-1, 1] output coordinates, ``out(p) = in(A·p)``
(``affine_grid`` + bilinear ``grid_sample`` with zero padding). View 2 is ``view2 = T(view1)``; the loss
un-warps view 2's output with ``affine2_to_1`` so that it lines up with view 1.

The per-image functions (:func:`random_affine`, :func:`random_translation_multiple`) consume the **numpy** global
RNG exactly as the official ones (parity fixtures). The batched generator the method uses,
:func:`paired_view`, draws from the global **torch** RNG (or ``generator``) on the CPU, like
:mod:`training.data.photometric`, so the engine's RNG checkpoint makes a resumed run draw the same views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def perform_affine_tf(data: torch.Tensor, tf_matrices: torch.Tensor | np.ndarray,
                      align_corners: bool = False) -> torch.Tensor:
    """(B, C, H, W), (B, 2, 3) -> (B, C, H, W): ``out(p) = data(A·p)``, bilinear, zero padding, differentiable.

    ``align_corners=True`` reproduces torch <= 1.2 (the official code ran on 0.4.1); False is today's default.
    """
    if data.ndim != 4:
        raise ValueError(f"data must be (B, C, H, W), got {tuple(data.shape)}")
    tf = torch.as_tensor(tf_matrices).to(device=data.device, dtype=data.dtype)
    if tf.shape != (data.shape[0], 2, 3):
        raise ValueError(f"tf_matrices must be (B, 2, 3) = {(data.shape[0], 2, 3)}, got {tuple(tf.shape)}")
    grid = F.affine_grid(tf, list(data.shape), align_corners=align_corners)  # (B, H, W, 2)
    return F.grid_sample(data, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def affine_from_params(rot_deg: torch.Tensor, shear_deg: torch.Tensor,
                       scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) angles in degrees and scales -> ``(affine1_to_2, affine2_to_1)``, each (B, 2, 3) float64, no shift.

    ``affine1_to_2 = [[cos a·s, -sin(a+sh)·s, 0], [sin a·s, cos(a+sh)·s, 0]]`` (official ``random_affine``);
    ``affine2_to_1`` is its inverse.
    """
    a = torch.deg2rad(rot_deg.double())
    sh = torch.deg2rad(shear_deg.double())
    s = scale.double()
    m = torch.stack([torch.stack([a.cos() * s, -(a + sh).sin() * s], -1),
                     torch.stack([a.sin() * s, (a + sh).cos() * s], -1)], -2)  # (B, 2, 2)
    inv = torch.linalg.inv(m)
    zeros = torch.zeros(m.shape[0], 2, 1, dtype=m.dtype)
    return torch.cat([m, zeros], -1), torch.cat([inv, zeros], -1)


def random_affine(img: torch.Tensor, min_rot: float = -30.0, max_rot: float = 30.0, min_shear: float = -10.0,
                  max_shear: float = 10.0, min_scale: float = 0.8, max_scale: float = 1.2,
                  align_corners: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official per-image ``random_affine``: (C, H, W) -> ``(img_tf, affine1_to_2, affine2_to_1)``.

    Three ``np.random.rand()`` draws in the order rotation, shear, scale. The matrices are float32, the inverse
    taken by numpy (in float64, then cast), as the official code.
    """
    if img.ndim != 3:
        raise ValueError(f"img must be (C, H, W), got {tuple(img.shape)}")
    a = np.radians(np.random.rand() * (max_rot - min_rot) + min_rot)
    shear = np.radians(np.random.rand() * (max_shear - min_shear) + min_shear)
    scale = np.random.rand() * (max_scale - min_scale) + min_scale
    a1to2 = np.array([[np.cos(a) * scale, -np.sin(a + shear) * scale, 0.0],
                      [np.sin(a) * scale, np.cos(a + shear) * scale, 0.0],
                      [0.0, 0.0, 1.0]], dtype=np.float32)
    a2to1 = np.linalg.inv(a1to2).astype(np.float32)
    a1to2_t = torch.from_numpy(a1to2[:2]).to(img.device)
    a2to1_t = torch.from_numpy(a2to1[:2]).to(img.device)
    out = perform_affine_tf(img.unsqueeze(0), a1to2_t.unsqueeze(0), align_corners=align_corners).squeeze(0)
    return out, a1to2_t, a2to1_t


def random_translation_multiple(data: torch.Tensor, half_side_min: int,
                                half_side_max: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """One random shift for the whole batch: ``out[..., y, x] = data[..., y+ty, x+tx]``, zero outside.

    |t| ∈ {min..max} per axis from ``np.random.randint``, then a sign per axis from ``np.random.choice``
    (the official draw order). Returns the shifted (B, C, H, W) tensor and ``(tx, ty)``.
    """
    if not 0 <= half_side_min <= half_side_max:
        raise ValueError(f"need 0 <= half_side_min <= half_side_max, got {half_side_min}, {half_side_max}")
    h, w = data.shape[-2:]
    padded = F.pad(data, (half_side_max,) * 4)  # (B, C, H+2m, W+2m)
    t = np.random.randint(half_side_min, half_side_max + 1, size=2)
    t = t * np.random.choice([-1, 1], size=(2,), replace=True)
    tx, ty = int(t[0]), int(t[1])
    oy, ox = ty + half_side_max, tx + half_side_max
    return padded[..., oy:oy + h, ox:ox + w], (tx, ty)


# -- the batched pair generator used by the method -------------------------------------------------------------
@dataclass
class AffineRange:
    """Ranges of the optional random affine of view 2 (official defaults; off in every paper run)."""

    rot: tuple[float, float] = (-30.0, 30.0)  # degrees
    shear: tuple[float, float] = (-10.0, 10.0)  # degrees
    scale: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        for name in ("rot", "shear", "scale"):
            lo, hi = getattr(self, name)
            if lo > hi or not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"AffineRange.{name} must be finite with lo <= hi, got ({lo}, {hi})")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def identity_affine(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, 2, 3) identity transforms."""
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype, device=device)
    return eye.expand(n, 2, 3).clone()


def paired_view(images: torch.Tensor, *, flip_p: float = 0.5, affine: AffineRange | None = None,
                align_corners: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometric part of IIC's view 2: optional random affine, then a horizontal flip with probability ``flip_p``.

    (B, C, H, W) -> ``(view2, affine2_to_1)`` with ``affine2_to_1`` (B, 2, 3) in ``images.dtype``: warping view
    2's network output by it (:func:`perform_affine_tf`) lines it up with view 1. A flip negates row 0 of
    ``affine2_to_1`` (official: flip after affine, so (flip·affine)⁻¹ = affine⁻¹·flip⁻¹ is affine⁻¹ with its
    x row negated).

    Draws (CPU, ``generator`` or the global torch RNG), in order: if ``affine``, B rotations, B shears, B scales;
    then B flip uniforms. Departure from the official code: it flips when ``rand() > flip_p``, i.e. with
    probability 1 - flip_p; here ``flip_p`` is the flip probability (the same at the paper's 0.5).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if not 0.0 <= flip_p <= 1.0:
        raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
    n = images.shape[0]
    view2 = images
    a2to1 = identity_affine(n, torch.float64)
    if affine is not None:
        rot = _uniform(n, *affine.rot, generator)
        shear = _uniform(n, *affine.shear, generator)
        scale = _uniform(n, *affine.scale, generator)
        a1to2, a2to1 = affine_from_params(rot, shear, scale)
        view2 = perform_affine_tf(view2, a1to2, align_corners=align_corners)
    flips = torch.rand(n, generator=generator) < flip_p  # (B,) bool, CPU
    if bool(flips.any()):
        sel = flips.to(images.device).view(-1, 1, 1, 1)
        view2 = torch.where(sel, view2.flip(-1), view2)
        a2to1[flips, 0, :] *= -1.0
    return view2, a2to1.to(device=images.device, dtype=images.dtype)


def horizontal_flip_affine(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, 2, 3) affine of a horizontal flip (its own inverse): x -> -x."""
    a = identity_affine(n, dtype)
    a[:, 0, 0] = -1.0
    return a

