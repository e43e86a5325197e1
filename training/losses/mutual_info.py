"""IIC's mutual-information objectives: the dense (segmentation) loss and the clustering loss.

Ji, Henriques, Vedaldi, "Invariant Information Clustering for Unsupervised Image Classification and
Segmentation", ICCV 2019: Eq. (1)-(3) (MI of the joint of paired cluster assignments) and Eq. (5) (the
segmentation objective averaged over the displacements t in Ω). Official code (MIT): github.com/xu-ji/IIC,
``code/utils/segmentation/IID_losses.py`` (``IID_segmentation_loss`` L14-83, ``IID_segmentation_loss_uncollapsed``
L86-159) and ``code/utils/cluster/IID_losses.py`` (``IID_loss``, ``compute_joint``). See docs/METHODS.md §2.2.

Everything here is a pure function of tensors. Three layers:

* :func:`displaced_joint` — J_s[i, j] = Σ_b Σ_{y,x} p1[b, i, y+sy, x+sx] · p2[b, j, y, x] for every shift
  s ∈ {-T..T}², three interchangeable implementations (``"conv"``, ``"fft"``, ``"loop"``; see ``JOINT_IMPLS``).
* :func:`iic_seg_loss` — the loss on already-aligned maps (mask, joint, optional cross-rank reduction,
  normalisation, symmetrisation, clamped marginals, λ). Used by IIC and AC.
* :func:`iic_seg_loss_with_affine` — the whole official function: un-warp view 2 with ``all_affine2_to_1``, the
  optional sparse random translation, the mask, then :func:`iic_seg_loss`. This is the parity surface.

Facts from the official code that look like bugs but are reproduced on purpose (do not "fix" them):

* The collapsed loss divides by a **Python-float** normaliser (a constant for autograd); the uncollapsed loss
  normalises each displacement differentiably. Their gradients differ from a naive ``p / p.sum()``.
* Marginals are taken **before** the EPS clamp, and the clamp is an in-place write, so clamped entries carry
  no gradient. :func:`_clamp_eps` reproduces that with ``torch.where``.
* The uncollapsed loss is **NaN** when one displacement has no unmasked overlap (0/0). That is the default
  here (parity with fixture ``iic_seg_loss_uncollapsed_allmask``); ``skip_empty_shifts=True`` drops those
  displacements and averages over the rest, which is what :mod:`training.methods.iic` uses for training.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from training.data.geometric import perform_affine_tf, random_translation_multiple

logger = logging.getLogger(__name__)

EPS = sys.float_info.epsilon  # 2.22e-16, as the official code (also in float32, where it is below 1 ulp of 1)

JointImpl = Literal["conv", "fft", "loop"]
JOINT_IMPLS: tuple[str, ...] = ("conv", "fft", "loop")
# Default implementation of the displaced joint: the fastest forward+backward on CPU at B=16, K=15, 64x64,
# T=10 (benchmarks/iic_loss_speed.py). All three agree to float rounding (tests/training/test_iic_loss.py).
DEFAULT_JOINT: JointImpl = "fft"

Reduce = Callable[[torch.Tensor], torch.Tensor]


# -- the displaced joint --------------------------------------------------------------------------------------
def displaced_joint(p1: torch.Tensor, p2: torch.Tensor, half_T: int, impl: JointImpl | None = None) -> torch.Tensor:
    """Unnormalised joints of all displacements: (B, K, H, W) x2 -> (2T+1, 2T+1, K, K).

    ``out[T+sy, T+sx, i, j] = Σ_b Σ_{y,x} p1[b, i, y+sy, x+sx] · p2[b, j, y, x]``, terms outside the map being
    zero (docs/METHODS.md §2.2 step 4).
    """
    impl = DEFAULT_JOINT if impl is None else impl
    _check_pair(p1, p2)
    if half_T < 0:
        raise ValueError(f"half_T must be >= 0, got {half_T}")
    if impl == "conv":
        return displaced_joint_conv(p1, p2, half_T)
    if impl == "fft":
        return displaced_joint_fft(p1, p2, half_T)
    if impl == "loop":
        return displaced_joint_loop(p1, p2, half_T)
    raise ValueError(f"unknown joint implementation {impl!r}; valid: {', '.join(JOINT_IMPLS)}")


def displaced_joint_conv(p1: torch.Tensor, p2: torch.Tensor, half_T: int) -> torch.Tensor:
    """The official formulation: one conv2d of the batch/class-swapped maps, p2 being the (H, W) filter."""
    x1 = p1.transpose(0, 1)  # (K, B, H, W): K "images" of B channels
    x2 = p2.transpose(0, 1)  # (K, B, H, W): K filters of B channels, H x W taps
    out = F.conv2d(x1, x2, padding=half_T)  # (K, K, 2T+1, 2T+1): out[i, j, T+sy, T+sx]
    return out.permute(2, 3, 0, 1)


def displaced_joint_loop(p1: torch.Tensor, p2: torch.Tensor, half_T: int) -> torch.Tensor:
    """Reference: one contraction per displacement over the overlapping windows (readable, slow)."""
    _, k, h, w = p1.shape
    side = 2 * half_T + 1
    rows = []
    for sy in range(-half_T, half_T + 1):
        cols = []
        for sx in range(-half_T, half_T + 1):
            y0, y1 = max(0, -sy), min(h, h - sy)  # rows y of p2 whose y+sy lies in p1
            x0, x1 = max(0, -sx), min(w, w - sx)
            if y1 <= y0 or x1 <= x0:  # no overlap at all
                cols.append((p1.sum() * p2.sum() * 0.0).expand(k, k))
                continue
            a = p1[:, :, y0 + sy:y1 + sy, x0 + sx:x1 + sx]  # p1 at (y+sy, x+sx)
            b = p2[:, :, y0:y1, x0:x1]  # p2 at (y, x)
            cols.append(torch.einsum("bihw,bjhw->ij", a, b))  # (K, K)
        rows.append(torch.stack(cols))
    out = torch.stack(rows)  # (2T+1, 2T+1, K, K)
    assert out.shape == (side, side, k, k)
    return out


def displaced_joint_fft(p1: torch.Tensor, p2: torch.Tensor, half_T: int) -> torch.Tensor:
    """Cross-correlation theorem, in float64: O(B K² HW) instead of O(B K² HW T²).

    Not in the official code. Zero padding to (H+T, W+T) makes the circular correlation linear for |s| <= T.
    Displacements whose total mass is at round-off level (no overlap of non-zero pixels) are set to exactly
    zero so that they behave as in the conv formulation (NaN in the uncollapsed loss, skipped with
    ``skip_empty_shifts``).
    """
    h, w = p1.shape[-2:]
    size = (h + half_T, w + half_T)
    f1 = torch.fft.rfft2(p1.double(), s=size)  # (B, K, H', W'/2+1) complex
    f2 = torch.fft.rfft2(p2.double(), s=size)
    # (K, K, H', W'') Σ_b F1[b, i] · conj(F2[b, j]): one small (K, B) @ (B, K) product per frequency, on contiguous
    # (H', W'', ...) copies. einsum("bihw,bjhw->ijhw") computes the same but strides over b and hw; at a 128 crop
    # with K = 20 it took 9 s instead of 0.3 s on this CPU.
    cross = torch.matmul(f1.permute(2, 3, 1, 0).contiguous(), f2.conj().permute(2, 3, 0, 1).contiguous())
    cross = _ContiguousGrad.apply(cross).permute(2, 3, 0, 1)  # (K, K, H', W'')
    corr = torch.fft.irfft2(cross, s=size)  # (K, K, H', W'): corr[..., d] = Σ p1[p + d] p2[p] (mod size)
    dy = torch.arange(-half_T, half_T + 1, device=p1.device) % size[0]
    dx = torch.arange(-half_T, half_T + 1, device=p1.device) % size[1]
    out = corr[:, :, dy][:, :, :, dx].permute(2, 3, 0, 1)  # (2T+1, 2T+1, K, K)
    mass = out.detach().sum(dim=(2, 3), keepdim=True)  # (2T+1, 2T+1, 1, 1)
    empty = mass.abs() <= 1e-12 * mass.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    out = out * (~empty).to(out.dtype)  # a product, not where(): NaN gradients propagate as in the conv
    return out.to(p1.dtype)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: the matmul above otherwise receives the
    permuted gradient of the inverse FFT and its backward falls back to one strided product per frequency (14 s
    instead of 3 s at a 128 crop, K = 20, batch 8)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


# -- the loss on aligned maps -----------------------------------------------------------------------------------
def iic_seg_loss(p1: torch.Tensor, p2: torch.Tensor, *, lamb: float = 1.0, half_T: int = 0,
                 mask: torch.Tensor | None = None, uncollapsed: bool = True, skip_empty_shifts: bool = False,
                 reduce: Reduce | None = None, joint: JointImpl | None = None,
                 stats: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IIC's dense MI loss of two aligned probability maps. Returns ``(loss, loss_no_lamb)``, scalars.

    Args:
        p1, p2: (B, K, H, W) cluster probabilities of view 1 and of view 2 already warped into view 1's frame.
        lamb: λ, the weight of the marginal entropies (1 gives -MI; the paper's head B uses 1.5 on *-3).
        half_T: T, the half side of the displacement window Ω = {-T..T}².
        mask: (B, H, W) {0, 1} in image-1 coordinates, multiplied into both maps (docs/METHODS.md §2.2 step 3).
        uncollapsed: True: mean over displacements of each displacement's -MI (``IID_segmentation_loss_
            uncollapsed``, every paper run). False: -MI of the joint summed over displacements, normalised by a
            detached constant (``IID_segmentation_loss``, the official script's default).
        skip_empty_shifts: drop displacements with no unmasked overlap instead of returning NaN (uncollapsed),
            and return a zero loss instead of NaN when nothing at all overlaps. Logged at DEBUG level and
            counted in ``stats["skipped_shifts"]``.
        reduce: applied to the unnormalised joint before normalisation, e.g. ``FitContext.all_reduce_sum``, so
            that W ranks with batch b compute the loss of the batch W*b: to the (S, K, K) per-displacement
            joints when uncollapsed, to their (K, K) sum when collapsed. Must be a differentiable sum.
        joint: implementation of :func:`displaced_joint` (default :data:`DEFAULT_JOINT`).
        stats: if given, receives ``skipped_shifts`` and ``n_shifts``.
    """
    _check_pair(p1, p2)
    if mask is not None:
        mask = _check_mask(mask, p1)
        m = mask.unsqueeze(1)  # (B, 1, H, W)
        p1, p2 = p1 * m, p2 * m
    j = displaced_joint(p1, p2, half_T, joint)  # (2T+1, 2T+1, K, K)
    k = p1.shape[1]
    j = j.reshape(-1, k, k)  # (S, K, K), S = (2T+1)²
    if uncollapsed:
        if reduce is not None:
            j = reduce(j)
        return _uncollapsed_loss(j, lamb, skip_empty_shifts, stats)
    p = j.sum(dim=0)  # (K, K)
    if reduce is not None:
        p = reduce(p)
    return _collapsed_loss(p, lamb, skip_empty_shifts, stats)


def _collapsed_loss(p: torch.Tensor, lamb: float, skip_empty: bool,
                    stats: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
    # (K, K) joint summed over displacements
    z = float(p.detach().sum())  # official: a Python float, so the normaliser is a constant for autograd
    if stats is not None:
        stats.update(skipped_shifts=0, n_shifts=1)
    if z == 0.0 and skip_empty:
        logger.debug("IIC collapsed loss: no unmasked overlap at all; returning 0")
        if stats is not None:
            stats["skipped_shifts"] = 1
        zero = (p * 0.0).sum()
        return zero, zero.detach()
    p = p / z
    p = (p + p.t()) / 2.0  # symmetrise
    p_i = p.sum(dim=1, keepdim=True)  # (K, 1), before the clamp
    p_j = p.sum(dim=0, keepdim=True)  # (1, K)
    return _mi_terms(p, p_i, p_j, lamb, dims=(0, 1))


def _uncollapsed_loss(j: torch.Tensor, lamb: float, skip_empty: bool,
                      stats: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
    # (S, K, K) joint of each displacement
    n_shifts = j.shape[0]
    z = j.sum(dim=(1, 2), keepdim=True)  # (S, 1, 1), differentiable (unlike the collapsed loss)
    if skip_empty:
        empty = z.detach().flatten() == 0  # (S,)
        z = torch.where(z == 0, torch.ones_like(z), z)  # keep 0/0 out of the graph: its gradient would be NaN
    p = j / z
    p = (p + p.transpose(1, 2)) / 2.0
    p_i = p.sum(dim=2, keepdim=True)  # (S, K, 1)
    p_j = p.sum(dim=1, keepdim=True)  # (S, 1, K)
    per_shift, per_shift_no_lamb = _mi_terms(p, p_i, p_j, lamb, dims=(1, 2))  # (S,) each
    if not skip_empty:
        if stats is not None:
            stats.update(skipped_shifts=0, n_shifts=n_shifts)
        return per_shift.sum() / n_shifts, per_shift_no_lamb.sum() / n_shifts
    keep = (~empty).to(per_shift.dtype)
    n_keep = int(keep.sum())
    if n_keep < n_shifts:
        logger.debug("IIC uncollapsed loss: skipped %d of %d displacements with no unmasked overlap",
                     n_shifts - n_keep, n_shifts)
    if stats is not None:
        stats.update(skipped_shifts=n_shifts - n_keep, n_shifts=n_shifts)
    denom = max(n_keep, 1)  # nothing overlaps at all: a zero loss with zero gradient
    return (per_shift * keep).sum() / denom, (per_shift_no_lamb * keep).sum() / denom


def _mi_terms(p: torch.Tensor, p_i: torch.Tensor, p_j: torch.Tensor, lamb: float,
              dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """-Σ P (log P - λ log p_i - λ log p_j) and the same with λ = 1, summed over ``dims``."""
    p, p_i, p_j = _clamp_eps(p), _clamp_eps(p_i), _clamp_eps(p_j)
    log_p, log_pi, log_pj = torch.log(p), torch.log(p_i), torch.log(p_j)
    loss = -(p * (log_p - lamb * log_pi - lamb * log_pj)).sum(dim=dims)
    loss_no_lamb = -(p * (log_p - log_pi - log_pj)).sum(dim=dims)
    return loss, loss_no_lamb


def _clamp_eps(t: torch.Tensor) -> torch.Tensor:
    """Entries below EPS become EPS with zero gradient (the official in-place ``t[t < EPS] = EPS``); NaN stays."""
    return torch.where(t < EPS, torch.full_like(t, EPS), t)


# -- the whole official function ----------------------------------------------------------------------------
def iic_seg_loss_with_affine(x1_outs: torch.Tensor, x2_outs: torch.Tensor, affine2_to_1: torch.Tensor, *,
                             mask: torch.Tensor | None = None, lamb: float = 1.0, half_T: int = 0,
                             sparse_min: int = 0, sparse_max: int = 0, uncollapsed: bool = True,
                             align_corners: bool = False, skip_empty_shifts: bool = False,
                             reduce: Reduce | None = None, joint: JointImpl | None = None,
                             stats: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``IID_segmentation_loss[_uncollapsed]`` from raw outputs of both views.

    Args:
        x1_outs, x2_outs: (B, K, H, W) softmax outputs for image 1 and for the transformed image 2.
        affine2_to_1: (B, 2, 3) ``all_affine2_to_1``; view 2 is un-warped with ``grid_sample`` (bilinear, zero
            padding): φ̃²(p) = φ²(A·p) in normalised coordinates. ``align_corners=True`` gives the torch 0.4.1
            semantics the official code ran with; False is today's default. They agree for square maps, flips
            and translation-free transforms.
        sparse_min, sparse_max: ``half_T_side_sparse_min/max``. Unless both are 0, one random global shift is
            drawn from the **numpy** global RNG exactly as ``random_translation_multiple`` (all paper runs: 0/0).
        The remaining arguments are those of :func:`iic_seg_loss`.
    """
    _check_pair(x1_outs, x2_outs)
    x2_inv = perform_affine_tf(x2_outs, affine2_to_1, align_corners=align_corners)  # (B, K, H, W) in view-1 frame
    if sparse_min != 0 or sparse_max != 0:
        x2_inv, _ = random_translation_multiple(x2_inv, sparse_min, sparse_max)
    return iic_seg_loss(x1_outs, x2_inv, lamb=lamb, half_T=half_T, mask=mask, uncollapsed=uncollapsed,
                        skip_empty_shifts=skip_empty_shifts, reduce=reduce, joint=joint, stats=stats)


# -- the clustering loss --------------------------------------------------------------------------------------
def iic_cluster_joint(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """(N, K) x2 -> (K, K): P = Σ_n p1_n p2_nᵀ, symmetrised, then normalised (differentiably)."""
    p = p1.t() @ p2  # (K, K)
    p = (p + p.t()) / 2.0  # official order: symmetrise before normalising (unlike the dense loss)
    return p / p.sum()


def iic_cluster_loss(p1: torch.Tensor, p2: torch.Tensor, *, lamb: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """IIC's clustering loss ``IID_loss`` on (N, K) softmax outputs of paired samples: ``(loss, loss_no_lamb)``.

    The official in-place clamp writes into ``expand()``-ed marginals, which torch >= 1 refuses to
    back-propagate; here the clamp is out of place with the same values, so the loss is differentiable and
    clamped entries carry no gradient, as in the torch 0.4 run.
    """
    if p1.ndim != 2 or p1.shape != p2.shape:
        raise ValueError(f"expected two (N, K) tensors of the same shape, got {tuple(p1.shape)} and "
                         f"{tuple(p2.shape)}")
    p = iic_cluster_joint(p1, p2)  # (K, K)
    p_i = p.sum(dim=1, keepdim=True)  # (K, 1)
    p_j = p.sum(dim=0, keepdim=True)  # (1, K)
    return _mi_terms(p, p_i, p_j, lamb, dims=(0, 1))


# -- validation ------------------------------------------------------------------------------------------------
def _check_pair(p1: torch.Tensor, p2: torch.Tensor) -> None:
    if p1.ndim != 4 or p1.shape != p2.shape:
        raise ValueError(f"expected two (B, K, H, W) maps of the same shape, got {tuple(p1.shape)} and "
                         f"{tuple(p2.shape)}")
    if p1.dtype != p2.dtype or not p1.is_floating_point():
        raise ValueError(f"expected two floating maps of one dtype, got {p1.dtype} and {p2.dtype}")


def _check_mask(mask: torch.Tensor | np.ndarray, like: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=like.device)
    b, _, h, w = like.shape
    if mask.shape != (b, h, w):
        raise ValueError(f"mask must be (B, H, W) = {(b, h, w)}, got {tuple(mask.shape)}")
    return mask.to(like.dtype)
