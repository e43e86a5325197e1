"""The plain inference graph export converts: uint8 frame -> cluster probabilities, nothing a deployment skips.

Built from ``Method.inference_net(head)`` (docs/ARCHITECTURE.md "Method"): that module already holds only what
inference needs (the evaluated head, no augmentation, no loss). Export deep-copies it and rewrites the copy with
one walker, as timm's ``reparameterize_model``:

1. every layer with a training-only form is replaced by its ``to_plain()`` module — AC's ``MaskedConv2d`` becomes
   an ``nn.Conv2d(padding=k//2)`` with the full learned kernel (no mask, no shift padding: "fall back to the
   standard convolution", Ouali et al. 2020, Sec. 3.2) and its masked attention the unmasked block;
2. every BatchNorm whose input is the output of a conv / linear layer and of nothing else is folded into that
   layer's weight and bias (BN in eval mode is the affine map ``gamma (x - mean) / sqrt(var + eps) + beta``);
   a BN with no such layer before it (AC's ``head_norm`` after a residual sum) becomes that per-channel affine
   map itself (:class:`ChannelAffine`, a Mul and an Add), so no BatchNormalization node reaches the graph.

The data flow that step 2 needs is observed, not guessed: one forward pass on an example records which module
produced each tensor and how many torch calls consumed it (forward hooks plus a ``TorchFunctionMode``), so a BN
after a conv whose output also feeds a residual branch is left alone. After folding, the outputs are compared
with the unfolded copy on the same example; a difference beyond float32 rounding is an :class:`ExportError`.

:class:`InferenceGraph` wraps the rewritten net with the graph's input contract: ``image`` uint8 (B, C, H, W) ->
float /255 -> net -> probabilities float32 (B, K, H, W). The argmax, the cluster-to-class Gather and the scores
Einsum are appended to the ONNX graph by ``export.onnx_export`` (exact node and initializer names of the contract).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from export.errors import ExportError

log = logging.getLogger(__name__)

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # weight (out, ...): per-output-channel scale
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FOLD_TOLERANCE = 1e-4  # max abs difference of probabilities allowed by folding (float32 rounding only)


class ChannelAffine(nn.Module):
    """An eval-mode BatchNorm that no layer could absorb: ``x * scale + shift`` per channel (dim 1)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, ...)
        view = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.scale.view(view) + self.shift.view(view)


@dataclass(frozen=True)
class FoldedPair:
    layer: str  # qualified name of the conv / linear layer that absorbed the BN
    batchnorm: str  # qualified name of the BN, now nn.Identity


class InferenceGraph(nn.Module):
    """``image`` uint8 (B, C, H, W) -> cluster probabilities float32 (B, K, H, W): the part of the graph torch
    exports. ``net`` is the plain inference net (float [0, 1] in, probabilities out)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image.to(torch.float32) / 255.0)  # (B, K, H, W)


def build_inference_graph(inference_net: nn.Module, example: torch.Tensor) -> tuple[InferenceGraph, list[FoldedPair]]:
    """Deep-copy ``inference_net``, make it plain, fold its BatchNorms and wrap it for export.

    ``example`` is a uint8 (B, C, H, W) input of a size the net accepts (it drives the data-flow pass and the
    folding check). The original module (and the method sharing its weights) is not modified.
    """
    if example.dtype != torch.uint8 or example.ndim != 4:
        raise ExportError(f"the example input must be uint8 (B, C, H, W), got {example.dtype} {tuple(example.shape)}")
    net = make_plain(copy.deepcopy(inference_net)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    graph = InferenceGraph(net).eval()
    with torch.no_grad():
        reference = graph(example)
    _check_probabilities(reference)
    pairs = fold_batchnorms(graph, example)
    with torch.no_grad():
        folded = graph(example)
    diff = float((folded - reference).abs().max())
    if diff > FOLD_TOLERANCE:
        raise ExportError(f"folding {len(pairs)} BatchNorm layers changed the outputs by {diff:.3g} (> "
                          f"{FOLD_TOLERANCE}); folded pairs: {[(p.layer, p.batchnorm) for p in pairs]}")
    log.info("inference graph: %d BatchNorm layers folded (max output change %.2g)", len(pairs), diff)
    return graph, pairs


def _check_probabilities(probs: torch.Tensor) -> None:
    if probs.ndim != 4 or probs.dtype != torch.float32:
        raise ExportError(f"the inference net must return float32 probabilities (B, K, H, W), got "
                          f"{probs.dtype} {tuple(probs.shape)}")
    if not torch.isfinite(probs).all():
        raise ExportError("the inference net returns NaN or infinite values on the example input (diverged or "
                          "untrained weights?)")
    sums = probs.sum(dim=1)
    if float((sums - 1).abs().max()) > 1e-3:
        raise ExportError(f"the inference net's outputs do not sum to 1 over clusters (got sums in "
                          f"[{float(sums.min()):.4g}, {float(sums.max()):.4g}]): inference_net() must end in a softmax")


# -- 1. training-only layers -> plain layers --------------------------------------------------------------
def make_plain(net: nn.Module) -> nn.Module:
    """Replace, in place, every module that has ``to_plain()`` by the module it returns (recursively).

    Returns ``net`` or, when ``net`` itself has ``to_plain()``, its plain form. Afterwards no module with
    ``to_plain`` remains (checked: a ``to_plain()`` returning another training-only layer is an error).
    """
    net = _plain(net)
    left = [name for name, m in net.named_modules() if callable(getattr(m, "to_plain", None))]
    if left:
        raise ExportError(f"modules still have a training-only form after to_plain(): {left}")
    return net


def _plain(module: nn.Module) -> nn.Module:
    to_plain = getattr(module, "to_plain", None)
    if callable(to_plain):
        return to_plain()
    for name, child in list(module.named_children()):
        setattr(module, name, _plain(child))
    return module


# -- 2. BatchNorm folding ------------------------------------------------------------------------------------
class _UseCounter(TorchFunctionMode):
    """Counts, for each watched tensor, the torch calls that consume it and return a tensor."""

    def __init__(self, watched: dict[int, torch.Tensor]):
        super().__init__()
        self.watched = watched  # id -> tensor (kept alive so ids are not reused during the pass)
        self.uses: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if any(isinstance(o, torch.Tensor) for o in tree_flatten(out)[0]):  # shape/size queries do not count
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, torch.Tensor) and id(t) in self.watched:
                    self.uses[id(t)] = self.uses.get(id(t), 0) + 1
        return out


def find_foldable_pairs(net: nn.Module, example: torch.Tensor) -> list[FoldedPair]:
    """(layer, BN) pairs where the BN's input is the layer's output and nothing else consumes that output."""
    produced: dict[int, str] = {}
    watched: dict[int, torch.Tensor] = {}
    bn_inputs: list[tuple[str, int]] = []
    handles = []
    for name, m in net.named_modules():
        if isinstance(m, FOLDABLE):
            handles.append(m.register_forward_hook(_record_output(name, produced, watched)))
        elif isinstance(m, BATCHNORMS) and _foldable_bn(m):
            handles.append(m.register_forward_pre_hook(_record_input(name, bn_inputs)))
    counter = _UseCounter(watched)
    try:
        with torch.no_grad(), counter:
            net(example)
    finally:
        for h in handles:
            h.remove()
    pairs, seen = [], set()
    for bn_name, tensor_id in bn_inputs:
        layer = produced.get(tensor_id)
        if layer is None or counter.uses.get(tensor_id, 0) != 1 or bn_name in seen:
            continue  # BN after a non-foldable op, or the layer's output feeds other ops too
        seen.add(bn_name)
        pairs.append(FoldedPair(layer, bn_name))
    return pairs


def _record_output(name: str, produced: dict[int, str], watched: dict[int, torch.Tensor]):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if isinstance(output, torch.Tensor):
            produced[id(output)] = name
            watched[id(output)] = output
    return hook


def _record_input(name: str, bn_inputs: list[tuple[str, int]]):
    def hook(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            bn_inputs.append((name, id(args[0])))
    return hook


def _foldable_bn(bn: nn.Module) -> bool:
    """Eval-mode BN with running statistics; without them BN normalises with batch statistics even in eval."""
    if bn.running_mean is None or bn.running_var is None:
        log.warning("BatchNorm %s has no running statistics (track_running_stats=False): it normalises with the "
                    "statistics of each batch, also in the exported graph, and is not folded", bn)
        return False
    return not bn.training


def fold_batchnorms(net: nn.Module, example: torch.Tensor) -> list[FoldedPair]:
    """Fold every foldable BN of ``net`` (in place) into its layer (the BN becomes ``nn.Identity``), and turn
    the other eval-mode BNs with running statistics into :class:`ChannelAffine`."""
    pairs = find_foldable_pairs(net, example)
    modules = dict(net.named_modules())
    folded = []
    for pair in pairs:
        layer, bn = modules[pair.layer], modules[pair.batchnorm]
        if layer.weight.shape[0] != bn.num_features:
            continue  # channel counts differ: not a per-channel affine of this layer's output
        _fold_into(layer, bn)
        _replace(net, pair.batchnorm, nn.Identity())
        folded.append(pair)
    for name, m in list(net.named_modules()):
        if isinstance(m, BATCHNORMS) and not m.training and m.running_var is not None:
            scale, shift = _affine(m)
            _replace(net, name, ChannelAffine(scale.float(), shift.float()))
            log.info("BatchNorm %s has no conv/linear layer before it to fold into: kept as a per-channel affine",
                     name)
    return folded


def _affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) in float64 with bn(x) = x * scale + shift per channel (eval mode)."""
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)  # (C,)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale.detach(), shift.detach()


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    scale, shift = _affine(bn)
    weight = layer.weight.double() * scale.view(-1, *([1] * (layer.weight.ndim - 1)))
    bias = shift if layer.bias is None else layer.bias.double() * scale + shift
    dtype = layer.weight.dtype
    layer.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def _replace(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
