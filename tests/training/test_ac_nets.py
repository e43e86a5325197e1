"""AC nets: grid causality for all 16 orderings (docs/METHODS.md §3.10 check 1), the o=0 inference path and to_plain()
(§3.10 check 5), masked conv against a direct offset sum, masked attention against explicit math."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.methods.ac.autoregressive import AutoregressiveSegNet
from training.methods.ac.masked_attention import MaskedSelfAttention2d, SelfAttention2d
from training.methods.ac.masked_conv import MaskedConv2d
from training.methods.ac.orderings import (
    ALL_IDS,
    RASTER_IDS,
    ZIGZAG_IDS,
    conv_mask,
    rank_map,
    rewrite_to_plain,
    shift_padding,
    use_ordering,
)

GRID = 6


def _linear_positive(net: AutoregressiveSegNet) -> AutoregressiveSegNet:
    """Every path nonzero: |w| everywhere, ReLU -> identity, BN eval with unit stats, attention queries zero.

    Zero queries make the attention a mean over the allowed keys: its output is then linear with positive
    coefficients, so no two paths can cancel (with |w| queries the softmax-logit path has either sign).
    """
    for module in net.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Identity())
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
            if isinstance(m, SelfAttention2d):
                m.query.weight.zero_()
                m.query.bias.zero_()
    return net.eval()


def _dependencies(net: AutoregressiveSegNet, oid: int, width: int) -> torch.Tensor:
    """(N, N) bool: [p, q] = grid output at p depends on h's output at q (autograd, one backward per p)."""
    n = GRID * GRID
    feat = torch.rand(1, width, GRID, GRID, dtype=torch.float64, requires_grad=True)
    with use_ordering(net, oid):
        out = net.grid_logits(feat).sum(dim=1).reshape(n)  # (N,) summed over clusters
    rows = [torch.autograd.grad(out[p], feat, retain_graph=True)[0].abs().sum(dim=(0, 1)) for p in range(n)]
    return torch.stack(rows).reshape(n, n) != 0  # (N, N)


@pytest.fixture(scope="module")
def causal_nets():
    torch.manual_seed(0)
    nets = {}
    for mode in ("strict", "inclusive"):
        net = AutoregressiveSegNet(3, {"main": 3}, width=4, n_blocks=3, grid_stride=4, attention=True, mode=mode)
        nets[mode] = _linear_positive(net.double())
    return nets


@pytest.fixture(scope="module")
def strict_dependencies(causal_nets):
    return {o: _dependencies(causal_nets["strict"], o, 4) for o in ALL_IDS}


@pytest.mark.parametrize("oid", ALL_IDS)
def test_strict_grid_output_depends_only_on_strictly_earlier_cells(strict_dependencies, oid):
    dep = strict_dependencies[oid]
    ranks = torch.from_numpy(rank_map(oid, GRID, GRID)).reshape(-1)
    earlier = ranks.view(1, -1) < ranks.view(-1, 1)  # [p, q]: rank(q) < rank(p)
    assert not (dep & ~earlier).any(), f"ordering {oid}: {int((dep & ~earlier).sum())} causality violations"
    # Not vacuous: most earlier cells are reached (raster: all but the blind spot) and the first cell is blind.
    coverage = (dep & earlier).sum() / earlier.sum()
    assert coverage > (0.9 if oid in RASTER_IDS else 0.8), float(coverage)
    assert not dep[int(torch.argmin(ranks))].any()
    if oid in RASTER_IDS:  # the previous cell on the same scan line is a type-A tap of the first masked layer
        order = torch.argsort(ranks).tolist()
        pairs = [(p, q) for q, p in itertools.pairwise(order) if abs(p - q) in (1, GRID)
                 and (p // GRID == q // GRID or p % GRID == q % GRID)]
        assert len(pairs) == GRID * (GRID - 1) and all(dep[p, q] for p, q in pairs)


@pytest.mark.parametrize("oid", [1, 6, 9, 16])
def test_inclusive_mode_adds_the_current_cell_and_nothing_later(causal_nets, oid):
    dep = _dependencies(causal_nets["inclusive"], oid, 4)
    ranks = torch.from_numpy(rank_map(oid, GRID, GRID)).reshape(-1)
    not_later = ranks.view(1, -1) <= ranks.view(-1, 1)
    assert not (dep & ~not_later).any()
    assert dep.diagonal().all()


def test_all_16_dependency_patterns_differ(strict_dependencies):
    patterns = {tuple(d.reshape(-1).tolist()) for d in strict_dependencies.values()}
    assert len(patterns) == 16


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("oid", ALL_IDS)
def test_masked_conv_is_the_sum_over_kept_offsets(oid, mask_type):
    torch.manual_seed(oid)
    conv = MaskedConv2d(2, 3, 3, mask_type=mask_type).double()
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    conv.ordering = oid
    out = conv(x)
    left, _, top, _ = shift_padding(oid, 3)
    keep = conv_mask(oid, 3, mask_type)
    xp = F.pad(x, (3, 3, 3, 3))
    expected = torch.zeros_like(out)
    for a in range(3):
        for c in range(3):
            if keep[a, c]:
                dy, dx = a - top, c - left
                shifted = xp[:, :, 3 + dy:3 + dy + 5, 3 + dx:3 + dx + 6]
                expected += torch.einsum("oi,bihw->bohw", conv.weight[:, :, a, c], shifted)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_footnote2_shift_pads_top_and_crops_last_row():
    """Paper footnote 2: Shift_1 pads one row on top and crops the last row, then a 3x3 conv (padding 1).

    §3.4's single padding (1, 1, 2, 0) + valid conv equals that on every row but the last, where the crop
    would also hide the current row from itself; that form keeps it (same taps on every row).
    """
    torch.manual_seed(0)
    conv = MaskedConv2d(1, 1, 3, mask_type="B")
    x = torch.randn(1, 1, 5, 5)
    shifted = F.pad(x, (0, 0, 1, 0))[:, :, :-1]  # pad top, crop last row
    conv.ordering = 1
    expected = F.conv2d(shifted, conv.weight * conv.masks[1], padding=1)
    out = conv(x)
    torch.testing.assert_close(out[:, :, :-1], expected[:, :, :-1])


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_o0_masked_conv_equals_conv2d_padding_1(mask_type):
    torch.manual_seed(1)
    conv = MaskedConv2d(4, 5, 3, mask_type=mask_type)
    ref = nn.Conv2d(4, 5, 3, padding=1, bias=False)
    ref.weight.data.copy_(conv.weight.data)
    x = torch.randn(2, 4, 7, 9)
    torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)
    plain = conv.to_plain()
    assert type(plain) is nn.Conv2d and plain.padding == (1, 1) and plain.weight is conv.weight
    torch.testing.assert_close(plain(x), ref(x), rtol=0, atol=0)


def _attention_reference(block: SelfAttention2d, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Single head by hand: logits QᵀK/sqrt(d_k), -inf where not allowed, softmax over keys."""
    b, _, h, w = x.shape
    q = block.query(x).flatten(2).transpose(1, 2)  # (B, N, d_k)
    k = block.key(x).flatten(2).transpose(1, 2)
    v = block.value(x).flatten(2).transpose(1, 2)
    logits = q @ k.transpose(1, 2) / np.sqrt(q.shape[-1])
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, h, w)
    return block.fuse(torch.cat([x, block.proj(out)], dim=1))


@pytest.mark.parametrize("oid", [None, 2, 7, 12])
def test_masked_attention_matches_explicit_math(oid):
    torch.manual_seed(2)
    att = MaskedSelfAttention2d(8).double()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    allowed = None
    if oid is not None:
        r = torch.from_numpy(rank_map(oid, 4, 5)).reshape(-1)
        allowed = r.view(1, -1) <= r.view(-1, 1)
    att.ordering = oid
    torch.testing.assert_close(att(x), _attention_reference(att.block, x, allowed), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("attention", [True, False])
def test_to_plain_rewrite_equals_o0_path(attention):
    torch.manual_seed(3)
    net = AutoregressiveSegNet(2, {"main": 3, "over": 5}, width=8, n_blocks=3, attention=attention,
                               grid_stride=4 if attention else 2)
    x = torch.rand(2, 2, 16, 24)
    net.train()
    with use_ordering(net, 3):  # fill BN running stats from a masked pass, as training does
        net(x)
    net.eval()
    with torch.no_grad():
        reference = {h: net(x, h) for h in ("main", "over")}
        plain = rewrite_to_plain(copy.deepcopy(net))
        kinds = {type(m) for m in plain.modules()}
        assert MaskedConv2d not in kinds and MaskedSelfAttention2d not in kinds
        assert (SelfAttention2d in kinds) == attention
        for h in ("main", "over"):
            torch.testing.assert_close(plain(x, h), reference[h], rtol=1e-5, atol=1e-6)
        with use_ordering(net, 3):
            assert not torch.allclose(net(x), reference["main"])  # the masked path is a different function


def test_use_ordering_resets_to_plain_even_after_an_error():
    net = AutoregressiveSegNet(1, {"main": 2}, width=4, n_blocks=2)
    with pytest.raises(RuntimeError), use_ordering(net, 5):
        raise RuntimeError("boom")
    assert all(m.ordering is None for m in net.modules() if hasattr(m, "ordering"))
    with pytest.raises(ValueError, match="ordering id"), use_ordering(net, 0):
        pass


def test_output_shape_and_probabilities():
    net = AutoregressiveSegNet(3, {"main": 4}, width=4, n_blocks=2, grid_stride=4)
    x = torch.rand(2, 3, 20, 28)
    with use_ordering(net, ZIGZAG_IDS[0]):
        y = net(x)
    assert y.shape == (2, 4, 20, 28)
    torch.testing.assert_close(y.sum(dim=1), torch.ones(2, 20, 28))
