"""Tiling of large frames (Severstal 256x1600 strips, 8k-wide line-scan images) with centre-crop stitching.

Tiles of one size cover the (padded) frame on a regular grid with at least ``overlap`` pixels shared by
neighbours; tile origins are multiples of the net's stride, so a strided net sees the same pixel phase as it
would on the whole frame. Each output pixel is taken from the tile in which it lies farthest from a tile border:
for equal tiles on a grid that is the tile whose centre is nearest along each axis (the distance to the border
is ``min(dy, dx)``, and maximising a min of independent terms maximises each), so the kept region of a tile
runs between the midpoints of neighbouring tile centres. With ``overlap >= 2 * receptive-field radius`` every
kept pixel saw its whole receptive field, and the tiled prediction equals the untiled one.

Frames above a pixel budget (``ModelMeta.tiling.max_pixels``, else :data:`DEFAULT_MAX_PIXELS`) are tiled even
when no tile size is set, so a dynamic model's memory stays bounded whatever the frame size: :func:`budget_tile`
picks the tile, as few tiles per axis as a square budget allows, each at most ``max_pixels``.

Example:
    >>> budget_tile((3000, 4000), 4_000_000, overlap=32, stride=8)
    (1520, 1360)
    >>> grid = plan_tiles((256, 1000), (256, 512), overlap=64, stride=8)
    >>> [(t.y0, t.x0) for t in grid]
    [(0, 0), (0, 248), (0, 488)]
    >>> [(t.keep_x0, t.keep_x1) for t in grid]
    [(0, 380), (380, 624), (624, 1000)]
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

# Pixels (padded H x W) above which a frame is tiled when the model sets no tile size, and the most pixels one
# backend call gets (tiles or frames per call are cut to fit). Peak RSS of one 4000 x 3000 frame on onnxruntime
# CPU (one thread): iic_neu (EfficientNet-Lite0 trunk) untiled 2.4 GB, 4 / 2 / 1 MP tiles 0.97 / 0.61 / 0.39 GB;
# iic_scratch_neu (Net10a at stride 2) untiled 4.5 GB, 2 MP tiles 1.19 GB, 1 MP 0.68 GB. 1 MP keeps both under 1 GB.
DEFAULT_MAX_PIXELS = 1_000_000
# Tile overlap when the model states none: twice a receptive-field radius of 16 px, the export default.
DEFAULT_OVERLAP = 32


@dataclass(frozen=True)
class Tile:
    """One tile: input window ``[y0, y0+h) x [x0, x0+w)`` and the frame region ``keep`` it writes to."""

    y0: int
    x0: int
    h: int
    w: int
    keep_y0: int
    keep_y1: int
    keep_x0: int
    keep_x1: int


def axis_starts(length: int, tile: int, overlap: int, stride: int = 1) -> list[int]:
    """Origins of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared pixels.

    ``length`` and ``tile`` are multiples of ``stride`` (the padded frame and the rounded tile). The first origin
    is 0 and the last ``length - tile``; the gaps between origins are multiples of the stride, as equal as
    possible, and none longer than ``tile - overlap`` rounded down to the stride.
    """
    if tile >= length:
        return [0]
    step = (tile - overlap) // stride * stride
    if step <= 0:
        raise ValueError(f"overlap {overlap} leaves no step for tile {tile} at stride {stride}")
    last = length - tile
    n_gaps = -(-last // step)
    base, extra = divmod(last // stride, n_gaps)  # gaps in stride units: `extra` of them one unit longer
    starts = [0]
    for i in range(n_gaps):
        starts.append(starts[-1] + (base + (i < extra)) * stride)
    starts[-1] = last
    return starts


def axis_keeps(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """Kept interval of each tile: split at the midpoints between consecutive tile centres."""
    cuts = [0]
    for a, b in itertools.pairwise(starts):
        cuts.append((a + b + tile) // 2)  # midpoint of the centres a + tile/2 and b + tile/2
    cuts.append(length)
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


def plan_tiles(size: tuple[int, int], tile: tuple[int, int], overlap: int, stride: int = 1) -> list[Tile]:
    """Tiles covering a frame of ``size`` (H, W), row-major. ``tile`` is clipped to the frame."""
    height, width = size
    th, tw = min(tile[0], height), min(tile[1], width)
    ys, xs = axis_starts(height, th, overlap, stride), axis_starts(width, tw, overlap, stride)
    keep_y, keep_x = axis_keeps(ys, th, height), axis_keeps(xs, tw, width)
    return [Tile(y, x, th, tw, ky[0], ky[1], kx[0], kx[1])
            for y, ky in zip(ys, keep_y, strict=True) for x, kx in zip(xs, keep_x, strict=True)]


def budget_tile(size: tuple[int, int], max_pixels: int, overlap: int, stride: int = 1,
                min_side: int = 1) -> tuple[int, int] | None:
    """Tile (th, tw) of at most ``max_pixels`` for a padded frame of ``size`` (H, W); None when the frame fits.

    Each axis gets the fewest tiles whose sides fit a square budget (a strip keeps its short side whole), and the
    tile is as small as covers the axis with those tiles and ``overlap`` (no tile much larger than needed). Sides
    are multiples of ``stride`` and at least ``min_side``. ValueError when the budget cannot hold the overlap.
    """
    height, width = size
    if height * width <= max_pixels:
        return None
    side = math.isqrt(max_pixels) // stride * stride
    if min(height, width) <= side:  # a strip: its short side whole, the long one as far as the budget allows
        short = min(height, width)
        long_side = _axis_tile(max(height, width), (max_pixels // short) // stride * stride, overlap, stride)
        tile = (short, long_side) if height <= width else (long_side, short)
    else:
        tile = (_axis_tile(height, side, overlap, stride), _axis_tile(width, side, overlap, stride))
    if min(tile) < max(min_side, overlap + stride) or tile[0] * tile[1] > max_pixels:
        raise ValueError(f"a pixel budget of {max_pixels} cannot hold tiles with overlap {overlap} at stride "
                         f"{stride}; raise max_pixels or lower the overlap")
    return tile


def _axis_tile(length: int, most: int, overlap: int, stride: int) -> int:
    """The smallest tile (a stride multiple, <= ``most``) covering ``length`` with as few tiles as ``most`` needs."""
    if most >= length:
        return length
    step = most - overlap
    if step < stride:
        return most  # budget_tile reports it
    n = -(-(length - overlap) // step)  # tiles along the axis
    need = -(-(length + (n - 1) * overlap) // n)  # n tiles sharing `overlap` cover `length`
    return min(most, -(-need // stride) * stride)
