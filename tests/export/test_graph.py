"""The plain inference graph: the to_plain() walker and BatchNorm folding (outputs unchanged, BN gone)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from export.errors import ExportError
from export.graph import (
    ChannelAffine,
    InferenceGraph,
    build_inference_graph,
    find_foldable_pairs,
    fold_batchnorms,
    make_plain,
)
from tests.export.tiny_methods import TinyAC, TinySeg, train_steps
from training.methods.ac.masked_attention import MaskedSelfAttention2d, SelfAttention2d
from training.methods.ac.masked_conv import MaskedConv2d


def _randomise_bn(net: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return net.eval()


class _Shared(nn.Module):
    """conv -> BN (foldable); conv2's output feeds BN2 *and* a residual (not foldable); linear -> BN1d."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.bn3 = nn.BatchNorm1d(3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        c = self.conv2(h)
        h = self.bn2(c) + c
        return h.mean(dim=(2, 3)), self.bn3(self.fc(h.mean(dim=(2, 3))))


def test_fold_batchnorms_keeps_outputs_and_skips_shared_outputs():
    net = _randomise_bn(_Shared())
    x = torch.rand(2, 2, 8, 8)
    before = [t.clone() for t in net(x)]
    pairs = fold_batchnorms(net, x)
    assert {(p.layer, p.batchnorm) for p in pairs} == {("conv", "bn"), ("fc", "bn3")}
    assert isinstance(net.bn, nn.Identity) and isinstance(net.bn3, nn.Identity)
    assert isinstance(net.bn2, ChannelAffine)  # conv2's output also feeds the residual: not folded, an affine map
    for a, b in zip(before, net(x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_find_pairs_ignores_batchnorm_without_running_stats():
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, track_running_stats=False)).eval()
    assert find_foldable_pairs(net, torch.rand(2, 1, 6, 6)) == []


def test_build_inference_graph_folds_every_bn_of_a_trained_net_and_keeps_outputs():
    method = TinySeg()
    train_steps(method, torch.rand(4, 1, 16, 16))
    x = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    graph, pairs = build_inference_graph(method.inference_net(), x)
    assert len(pairs) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in graph.modules())
    with torch.no_grad():
        reference = InferenceGraph(method.inference_net()).eval()(x)
        torch.testing.assert_close(graph(x), reference, atol=1e-5, rtol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in method.modules())  # the method itself is untouched


def test_make_plain_turns_masked_layers_into_plain_ones_with_the_learned_weights():
    method = TinyAC()
    train_steps(method, torch.rand(2, 1, 16, 16), steps=2, lr=0.01)
    net = method.inference_net()
    masked = [m for m in net.modules() if isinstance(m, MaskedConv2d)]
    plain = make_plain(copy.deepcopy(net)).eval()
    assert not any(isinstance(m, MaskedConv2d | MaskedSelfAttention2d) for m in plain.modules())
    assert any(isinstance(m, SelfAttention2d) for m in plain.modules())
    convs = {tuple(m.weight.shape): m for m in plain.modules() if type(m) is nn.Conv2d and m.kernel_size == (3, 3)}
    for m in masked:  # full kernels, no mask applied
        torch.testing.assert_close(convs[tuple(m.weight.shape)].weight, m.weight)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x))


def test_make_plain_rejects_a_to_plain_that_returns_a_training_layer():
    class Stubborn(nn.Module):
        def to_plain(self):
            return Stubborn2()

    class Stubborn2(nn.Module):
        def to_plain(self):
            return nn.Identity()

    with pytest.raises(ExportError, match="training-only"):
        make_plain(nn.Sequential(Stubborn()))


def test_inference_net_without_softmax_is_rejected():
    net = nn.Conv2d(1, 3, 1)
    with pytest.raises(ExportError, match="sum to 1"):
        build_inference_graph(net, torch.randint(0, 256, (1, 1, 4, 4), dtype=torch.uint8))


def test_example_must_be_uint8():
    with pytest.raises(ExportError, match="uint8"):
        build_inference_graph(nn.Softmax(dim=1), torch.rand(1, 1, 4, 4))
