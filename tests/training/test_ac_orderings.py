"""AC orderings: docs/METHODS.md §3.3/§3.4 tables (masks, paddings), rank maps, the pair sampler (§3.10 check 4)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats
import torch

from training.methods.ac.orderings import (
    ALL_IDS,
    RASTER_IDS,
    ZIGZAG_IDS,
    conv_mask,
    rank_map,
    sample_ordering_pair,
    shift_padding,
)

# docs/METHODS.md §3.4, shifted-frame 3x3 masks (rows = padded-window rows, top to bottom), ids 1-8.
SPEC_MASKS = {
    1: ([[1, 1, 1], [1, 1, 1], [1, 0, 0]], [[1, 1, 1], [1, 1, 1], [1, 1, 0]]),
    2: ([[1, 1, 1], [1, 1, 1], [0, 0, 1]], [[1, 1, 1], [1, 1, 1], [0, 1, 1]]),
    3: ([[1, 0, 0], [1, 1, 1], [1, 1, 1]], [[1, 1, 0], [1, 1, 1], [1, 1, 1]]),
    4: ([[0, 0, 1], [1, 1, 1], [1, 1, 1]], [[0, 1, 1], [1, 1, 1], [1, 1, 1]]),
    5: ([[1, 1, 1], [1, 1, 0], [1, 1, 0]], [[1, 1, 1], [1, 1, 1], [1, 1, 0]]),
    6: ([[1, 1, 0], [1, 1, 0], [1, 1, 1]], [[1, 1, 0], [1, 1, 1], [1, 1, 1]]),
    7: ([[1, 1, 1], [0, 1, 1], [0, 1, 1]], [[1, 1, 1], [1, 1, 1], [0, 1, 1]]),
    8: ([[0, 1, 1], [0, 1, 1], [1, 1, 1]], [[0, 1, 1], [1, 1, 1], [1, 1, 1]]),
}
# docs/METHODS.md §3.3, padding (l, r, t, b) for 3x3.
SPEC_PADS = {1: (1, 1, 2, 0), 2: (1, 1, 2, 0), 3: (1, 1, 0, 2), 4: (1, 1, 0, 2),
             5: (2, 0, 1, 1), 6: (2, 0, 1, 1), 7: (0, 2, 1, 1), 8: (0, 2, 1, 1)}


@pytest.mark.parametrize("oid", RASTER_IDS)
def test_conv_masks_match_spec_table(oid):
    type_a, type_b = SPEC_MASKS[oid]
    np.testing.assert_array_equal(conv_mask(oid, 3, "A"), np.array(type_a))
    np.testing.assert_array_equal(conv_mask(oid, 3, "B"), np.array(type_b))


@pytest.mark.parametrize("oid", RASTER_IDS)
def test_paddings_match_spec_table(oid):
    assert shift_padding(oid, 3) == SPEC_PADS[oid]


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_every_tap_is_seen_under_at_least_6_of_8_raster_orderings(mask_type):
    """§3.4: no weight index goes untrained with the 8 raster orderings (so no tap is frozen by default)."""
    seen = sum(conv_mask(o, 3, mask_type).astype(int) for o in RASTER_IDS)
    assert seen.min() >= 6, seen


def test_zigzag_paddings_shift_down_for_top_and_up_for_bottom_starts():
    assert [shift_padding(o, 3) for o in ZIGZAG_IDS] == [(1, 1, 2, 0)] * 4 + [(1, 1, 0, 2)] * 4
    assert shift_padding(0, 3) == (1, 1, 1, 1) and shift_padding(0, 5) == (2, 2, 2, 2)


@pytest.mark.parametrize("oid", ALL_IDS)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_kept_taps_are_exactly_the_predecessors_within_reach(oid, k, mask_type):
    """Independent of the mask rule: a tap is kept iff its cell is earlier in the scan (rank map of a big grid)."""
    n = 4 * k
    ranks = rank_map(oid, n, n)
    left, _, top, _ = shift_padding(oid, k)
    ci, cj = n // 2, n // 2
    mask = conv_mask(oid, k, mask_type)
    for a, c in itertools.product(range(k), range(k)):
        dy, dx = a - top, c - left
        earlier = ranks[ci + dy, cj + dx] < ranks[ci, cj]
        if oid in ZIGZAG_IDS:  # convs under zigzag see strictly earlier anti-diagonals only (docs/METHODS.md §3.3)
            o_sy = 1 if oid in (9, 10, 11, 12) else -1
            o_sx = 1 if oid in (9, 10, 13, 14) else -1
            earlier = o_sy * dy + o_sx * dx < 0
        expected = earlier or (dy == 0 and dx == 0 and mask_type == "B")
        assert bool(mask[a, c]) == expected, (oid, a, c)


@pytest.mark.parametrize("oid", ALL_IDS)
def test_rank_maps_are_permutations_with_unit_steps(oid):
    h, w = 5, 7
    ranks = rank_map(oid, h, w)
    assert sorted(ranks.ravel().tolist()) == list(range(h * w))
    # Consecutive cells of every raster/zigzag scan are 8-neighbours, except raster line jumps.
    pos = np.argsort(ranks.ravel())
    steps = np.abs(np.diff(np.stack(np.unravel_index(pos, (h, w))), axis=1)).max(axis=0)
    if oid in ZIGZAG_IDS:
        assert steps.max() == 1
    else:
        assert (steps > 1).sum() == (h - 1 if oid <= 4 else w - 1)


def test_rank_map_known_values():
    # id 1 row-major TL, id 5 column-major TL, id 9 JPEG zigzag (first step right), id 10 first step down.
    np.testing.assert_array_equal(rank_map(1, 2, 3), [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(rank_map(5, 2, 3), [[0, 2, 4], [1, 3, 5]])
    np.testing.assert_array_equal(rank_map(4, 2, 3), [[5, 4, 3], [2, 1, 0]])
    np.testing.assert_array_equal(rank_map(9, 3, 3), [[0, 1, 5], [2, 4, 6], [3, 7, 8]])
    np.testing.assert_array_equal(rank_map(10, 3, 3), [[0, 2, 3], [1, 4, 7], [5, 6, 8]])
    np.testing.assert_array_equal(rank_map(16, 3, 3), [[8, 6, 5], [7, 4, 1], [3, 2, 0]])


def test_all_16_orderings_distinct():
    maps = {tuple(rank_map(o, 4, 5).ravel()) for o in ALL_IDS}
    assert len(maps) == 16


def test_bad_ids_and_kernel_sizes_are_rejected():
    with pytest.raises(ValueError, match="ordering id"):
        rank_map(17, 3, 3)
    with pytest.raises(ValueError, match="odd"):
        conv_mask(1, 4)
    with pytest.raises(ValueError, match="two distinct"):
        sample_ordering_pair([3])


@pytest.mark.parametrize("ids", [RASTER_IDS, ALL_IDS])
def test_pair_sampler_is_uniform_over_distinct_ordered_pairs(ids):
    n_pairs = len(ids) * (len(ids) - 1)
    draws = 60 * n_pairs
    gen = torch.Generator().manual_seed(0)
    counts: dict[tuple[int, int], int] = {}
    for _ in range(draws):
        pair = sample_ordering_pair(ids, generator=gen)
        assert pair[0] != pair[1]
        counts[pair] = counts.get(pair, 0) + 1
    assert len(counts) == n_pairs
    p = 1 / n_pairs
    sigma = np.sqrt(draws * p * (1 - p))
    worst = max(abs(c - draws * p) for c in counts.values())
    # A uniform sampler puts ~0.3% of pairs outside 3 sigma (about one of 240), so: at most 1% of the pairs
    # outside 3 sigma, none outside 4 sigma, and a chi-square test. The seed is fixed: the test is deterministic.
    outside = sum(abs(c - draws * p) > 3 * sigma for c in counts.values())
    assert outside <= max(1, round(0.01 * n_pairs)) and worst < 4 * sigma, (outside, worst / sigma)
    assert scipy.stats.chisquare(list(counts.values())).pvalue > 1e-3


def test_pair_sampler_uses_global_rng():
    torch.manual_seed(5)
    a = [sample_ordering_pair(ALL_IDS) for _ in range(20)]
    torch.manual_seed(5)
    assert a == [sample_ordering_pair(ALL_IDS) for _ in range(20)]
