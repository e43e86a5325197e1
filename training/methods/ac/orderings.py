"""The 16 pixel orderings of Autoregressive Clustering (Ouali, Hudelot, Tami, ECCV 2020, "Autoregressive
Unsupervised Image Segmentation"): rank maps, Shift paddings and 3x3 (any odd k) masks, and the pair sampler.

There is no official AC code; everything below follows docs/METHODS.md §3.3-§3.5.

Ids (canonical, ours; the paper's numbering is unknown and irrelevant because sampling is uniform):

====  ======  ==========  ============  =========  ====================
 id    scan    vertical    horizontal    Shift      pad (l, r, t, b), 3x3
====  ======  ==========  ============  =========  ====================
  1    row     T->B        L->R          down       (1, 1, 2, 0)
  2    row     T->B        R->L          down       (1, 1, 2, 0)
  3    row     B->T        L->R          up         (1, 1, 0, 2)
  4    row     B->T        R->L          up         (1, 1, 0, 2)
  5    col     T->B        L->R          right      (2, 0, 1, 1)
  6    col     B->T        L->R          right      (2, 0, 1, 1)
  7    col     T->B        R->L          left       (0, 2, 1, 1)
  8    col     B->T        R->L          left       (0, 2, 1, 1)
 9-16  zigzag  start corner TL, TR, BL, BR; odd id = first step horizontal, even id = first step vertical;
               Shift down for top-corner starts, up for bottom-corner starts
====  ======  ==========  ============  =========  ====================

Raster ranks (§3.3): row-major ``ĩ*W + j̃``, column-major ``j̃*H + ĩ`` with ĩ = i or H-1-i and j̃ = j or W-1-j.
Zigzag (§3.3 [R]+[P], JPEG diagonal scan): visit anti-diagonals d = ĩ + j̃ in increasing order, alternating the
direction along consecutive diagonals. "First step horizontal" moves from the start corner along the row (right
for TL/BL, left for TR/BR), as JPEG's scan does from TL; so on odd d the scan walks with increasing ĩ.

Masks (§3.4): tap (a, c) of a k x k kernel in the padded window sees offset (dy, dx) = (a - t_pad, c - l_pad).
Keep it iff the offset is a predecessor of the current cell; the centre (0, 0) is kept by type B only.
  row-major: sy*dy < 0, or (dy = 0 and sx*dx < 0);  column-major: the roles of dy and dx swapped;
  zigzag:    sy*dy + sx*dx < 0 (strictly earlier anti-diagonal; attention supplies the in-diagonal order),
with sy = +1 for T->B (top starts) and sx = +1 for L->R (left starts).
Id 0 means "no ordering": symmetric padding, full kernel (the paper's inference).
The reimplementation (Max-Manning/autoregunsupseg) numbers them differently; its id -> ours (docs/METHODS.md §3.9):
1->1, 2->5, 3->2, 4->7, 5->6, 6->3, 7->4, 8->8, and its masks are our type-B masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

RASTER_IDS: tuple[int, ...] = tuple(range(1, 9))
ZIGZAG_IDS: tuple[int, ...] = tuple(range(9, 17))
ALL_IDS: tuple[int, ...] = RASTER_IDS + ZIGZAG_IDS

MaskType = Literal["A", "B"]
Shift = Literal["down", "up", "right", "left"]


@dataclass(frozen=True)
class Ordering:
    """One scan order. ``sy``/``sx`` = +1 for T->B / L->R, -1 for B->T / R->L (the start corner for zigzag)."""

    id: int
    kind: Literal["row", "col", "zigzag"]
    sy: int
    sx: int
    first_step: Literal["h", "v"] | None = None  # zigzag only

    @property
    def shift(self) -> Shift:
        """Direction of the footnote-2 Shift: along the primary axis (the vertical one for zigzag)."""
        if self.kind == "col":
            return "right" if self.sx > 0 else "left"
        return "down" if self.sy > 0 else "up"


def _table() -> dict[int, Ordering]:
    raster = [("row", 1, 1), ("row", 1, -1), ("row", -1, 1), ("row", -1, -1),
              ("col", 1, 1), ("col", -1, 1), ("col", 1, -1), ("col", -1, -1)]
    table = {i + 1: Ordering(i + 1, kind, sy, sx) for i, (kind, sy, sx) in enumerate(raster)}
    corners = [(1, 1), (1, -1), (-1, 1), (-1, -1)]  # TL, TR, BL, BR
    for c, (sy, sx) in enumerate(corners):
        for s, step in enumerate(("h", "v")):
            oid = 9 + 2 * c + s
            table[oid] = Ordering(oid, "zigzag", sy, sx, step)
    return table


ORDERINGS: dict[int, Ordering] = _table()


def get_ordering(oid: int) -> Ordering:
    if oid not in ORDERINGS:
        raise ValueError(f"ordering id must be one of {ALL_IDS}, got {oid!r}")
    return ORDERINGS[oid]


# -- rank maps ----------------------------------------------------------------------------------------
def rank_map(oid: int, height: int, width: int) -> np.ndarray:
    """(H, W) int64: position of each grid cell in the scan ``oid`` (0 = first visited)."""
    o = get_ordering(oid)
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    it = i if o.sy > 0 else height - 1 - i
    jt = j if o.sx > 0 else width - 1 - j
    if o.kind == "row":
        return (it * width + jt).astype(np.int64)
    if o.kind == "col":
        return (jt * height + it).astype(np.int64)
    d = it + jt
    # Along diagonal d: "h"-first walks with increasing ĩ on odd d, "v"-first on even d.
    up = (d % 2 == 1) if o.first_step == "h" else (d % 2 == 0)
    within = np.where(up, it, -it)
    order = np.lexsort((within.ravel(), d.ravel()))  # primary key d, then position along the diagonal
    ranks = np.empty(height * width, dtype=np.int64)
    ranks[order] = np.arange(height * width)
    return ranks.reshape(height, width)


# -- Shift padding and masks --------------------------------------------------------------------------
def shift_padding(oid: int, kernel_size: int = 3) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that implements footnote 2's Shift plus a "valid" conv.

    Shift by p = k//2 along the primary direction: 2p on the leading side, 0 on the trailing side, p on the
    other two. ``oid = 0`` is the symmetric inference padding (p, p, p, p).
    """
    p = _half(kernel_size)
    if oid == 0:
        return (p, p, p, p)
    return {"down": (p, p, 2 * p, 0), "up": (p, p, 0, 2 * p),
            "right": (2 * p, 0, p, p), "left": (0, 2 * p, p, p)}[get_ordering(oid).shift]


def conv_mask(oid: int, kernel_size: int = 3, mask_type: MaskType = "B") -> np.ndarray:
    """(k, k) uint8 mask in the shifted (padded-window) frame; ``oid = 0`` is all ones."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    k = kernel_size
    _half(k)
    if oid == 0:
        return np.ones((k, k), dtype=np.uint8)
    o = get_ordering(oid)
    left, _, top, _ = shift_padding(oid, k)
    dy, dx = np.meshgrid(np.arange(k) - top, np.arange(k) - left, indexing="ij")
    vy, vx = o.sy * dy, o.sx * dx
    if o.kind == "row":
        keep = (vy < 0) | ((dy == 0) & (vx < 0))
    elif o.kind == "col":
        keep = (vx < 0) | ((dx == 0) & (vy < 0))
    else:
        keep = vy + vx < 0
    keep[(dy == 0) & (dx == 0)] = mask_type == "B"
    return keep.astype(np.uint8)


def _half(kernel_size: int) -> int:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"masked kernels must have an odd size, got {kernel_size}")
    return kernel_size // 2


# -- sampling -----------------------------------------------------------------------------------------
def sample_ordering_pair(ids: Sequence[int], generator: torch.Generator | None = None) -> tuple[int, int]:
    """Uniform over the ordered pairs (o1, o2) of ``ids`` with o1 != o2 (docs/METHODS.md §A5 [P]).

    Departs from the reimplementation, which draws both independently and can repeat one: o1 = o2 leaves only
    entropy maximisation, with no invariance signal. Uses the global torch RNG unless ``generator`` is given.
    """
    n = len(ids)
    if n < 2 or len(set(ids)) != n:
        raise ValueError(f"need at least two distinct ordering ids, got {tuple(ids)}")
    first = int(torch.randint(n, (), generator=generator))
    second = int(torch.randint(n - 1, (), generator=generator))
    second += second >= first
    return ids[first], ids[second]


# -- layers that change with the ordering -------------------------------------------------------------
class OrderedLayer(nn.Module):
    """A layer whose training form depends on ``self.ordering`` (an id, or None for the plain inference form).

    The ordering is module state, not a forward argument, so nets stay ``nn.Sequential``-friendly and export
    can swap each layer for :meth:`to_plain` without touching the callers. Set it with :func:`use_ordering`.
    """

    ordering: int | None = None

    def to_plain(self) -> nn.Module:
        """The equivalent plain inference module (ordering None), sharing this layer's parameters."""
        raise NotImplementedError


@contextlib.contextmanager
def use_ordering(net: nn.Module, oid: int | None) -> Iterator[nn.Module]:
    """Run ``net`` under ordering ``oid`` inside the block; every :class:`OrderedLayer` returns to None after."""
    if oid is not None:
        get_ordering(oid)
    layers = [m for m in net.modules() if isinstance(m, OrderedLayer)]
    for m in layers:
        m.ordering = oid
    try:
        yield net
    finally:
        for m in layers:
            m.ordering = None


def rewrite_to_plain(net: nn.Module) -> nn.Module:
    """Replace, in place, every :class:`OrderedLayer` inside ``net`` by its ``to_plain()`` module.

    Reference walker for export (which deep-copies the net first); returns ``net`` (or the plain form of
    ``net`` itself when it is an ordered layer).
    """
    if isinstance(net, OrderedLayer):
        return net.to_plain()
    for name, child in list(net.named_children()):
        setattr(net, name, rewrite_to_plain(child))
    return net
