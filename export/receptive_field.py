"""The tile overlap a net needs, measured: how far one input pixel's change reaches in the output.

Tiling equals the untiled prediction when neighbouring tiles share at least twice the receptive-field radius
(:mod:`usseg_sdk.tiling`). The radius is measured rather than computed from the layers: one pixel in the middle of a
random frame is changed and the farthest output pixel (Chebyshev distance) whose probabilities move by more than
:data:`TOLERANCE` of the largest move is the radius (export records it in ``verify.json``; :func:`overlap_for` turns
it into the overlap). Deep nets have a theoretical receptive field of hundreds of pixels whose outer part carries
almost no weight (the effective receptive field); the tolerance keeps that tail out, so the overlap is what
changes predictions, not what changes the eighth decimal. A net with global context (attention, pooling over the
frame) reaches the border: its overlap is capped at :data:`MAX_OVERLAP` and tiles agree with the whole frame only
approximately (the verification reports how well).

A net can also depend on the frame's size without a wide receptive field: a head that upsamples a map a few pixels
smaller than half the frame to the frame's size samples positions that drift with the size (IIC's Net10a with
``head_padding 0``), and batch-statistics BatchNorm sees the whole frame. Such a net gives a different output on a
crop than on the whole frame away from the crop's border; the probe checks that too and treats it as global.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from usseg_sdk.preprocess import round_up
from usseg_sdk.tiling import DEFAULT_OVERLAP

TOLERANCE = 1e-2  # change, relative to the largest change, that counts as "reached"
CROP_TOLERANCE = 1e-3  # probability difference between a crop and the whole frame that makes a net size-dependent
MAX_OVERLAP = 128  # cap (and the overlap of nets with global context)
PROBE_SIZE = 192  # side of the probe frame before rounding to the stride


@torch.no_grad()
def receptive_radius(net: Callable[[torch.Tensor], torch.Tensor], channels: int, stride: int = 1, min_size: int = 1,
                     size: int = PROBE_SIZE) -> int | None:
    """Radius in input pixels of the effective receptive field of ``net`` (in eval mode; uint8 (B, C, H, W) ->
    probabilities (B, K, H, W)); None when it reaches the probe frame's border (global context)."""
    side = round_up(max(size, min_size), stride)
    generator = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (1, channels, side, side), dtype=torch.uint8, generator=generator)
    changed = frame.clone()
    c = side // 2
    changed[:, :, c, c] = 255 - changed[:, :, c, c]
    whole = net(frame).float()
    delta = (net(changed).float() - whole).abs().amax(dim=(0, 1))  # (H, W)
    ys, xs = torch.nonzero(delta > max(TOLERANCE * float(delta.max()), 1e-7), as_tuple=True)
    radius = int(torch.maximum((ys - c).abs(), (xs - c).abs()).max()) if ys.numel() else 0
    if radius >= c - 1 or not _crop_consistent(net, frame, whole, radius, stride, min_size):
        return None
    return radius


def _crop_consistent(net: Callable[[torch.Tensor], torch.Tensor], frame: torch.Tensor, whole: torch.Tensor,
                     radius: int, stride: int, min_size: int) -> bool:
    """Whether the net's output on a top-left crop equals its output on the whole probe frame farther than
    ``2 * radius + stride`` from the crop's bottom/right border (True when no such interior is left to compare)."""
    side = frame.shape[-1]
    crop = max(round_up(side * 5 // 8, stride), round_up(min_size, stride))
    inner = crop - 2 * radius - stride
    if crop >= side or inner < 8:
        return True
    part = net(frame[:, :, :crop, :crop].contiguous()).float()
    diff = (part[..., :inner, :inner] - whole[..., :inner, :inner]).abs().max()
    return float(diff) <= CROP_TOLERANCE


def overlap_for(radius: int | None, stride: int) -> int:
    """Tile overlap for a measured radius: twice it, at least the runtime's default (a single random probe frame
    can under-measure, and an untrained head may not react at all), a multiple of the stride, capped."""
    cap = round_up(MAX_OVERLAP, stride)
    if radius is None:
        return cap
    return min(max(round_up(2 * radius, stride), round_up(DEFAULT_OVERLAP, stride)), cap)
