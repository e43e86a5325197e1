"""PiCIE's network: ResNet-18 trunk + a 4-level FPN decoder without norm or ReLU (docs/METHODS.md §5.3).

Official: janghyuncho/PiCIE ``modules/fpn.py`` (``PanopticFPN``, ``FPNDecoder``) and ``modules/backbone.py``.
The decoder has four 1x1 convs with bias (res5, res4, res3, res2 -> ``out_dim``) and merges top-down with bilinear
upsampling (align_corners=False) to each lateral's size:

    o1 = l5(res5);  o2 = up(o1) + l4(res4);  o3 = up(o2) + l3(res3);  o4 = up(o3) + l2(res2)

The output o4 has ``out_dim`` (128) channels at stride 4. Our lateral convs are named by the level they read
(``lateral2`` ... ``lateral5``); the official names are ``decoder.layer4`` (res2) ... ``decoder.layer1`` (res5),
see :func:`from_official_key`. ImageNet weights load from a local torchvision-layout file
(:func:`load_imagenet_backbone`), never downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import CheckpointError
from training.nets.resnet import ResNet, StateDictMismatchError, load_torchvision_state_dict, resnet18
from training.nets.weights import adapt_first_conv, read_state_dict

logger = logging.getLogger(__name__)

# Official decoder names -> ours (the official ``layerN`` counts from the top of the pyramid).
_OFFICIAL_DECODER_NAMES = {"layer1": "lateral5", "layer2": "lateral4", "layer3": "lateral3", "layer4": "lateral2"}


class FPNDecoder(nn.Module):
    """Top-down merge of ``[res2, res3, res4, res5]`` into one stride-4 map with ``out_dim`` channels."""

    def __init__(self, in_channels: tuple[int, int, int, int] = (64, 128, 256, 512), out_dim: int = 128):
        super().__init__()
        # Defined res2 first so state_dict order matches the official one (decoder.layer4 = res2 comes first).
        self.lateral2 = nn.Conv2d(in_channels[0], out_dim, 1)
        self.lateral3 = nn.Conv2d(in_channels[1], out_dim, 1)
        self.lateral4 = nn.Conv2d(in_channels[2], out_dim, 1)
        self.lateral5 = nn.Conv2d(in_channels[3], out_dim, 1)
        self.out_dim = out_dim

    @staticmethod
    def _up_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False) + lateral

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        res2, res3, res4, res5 = feats
        o1 = self.lateral5(res5)
        o2 = self._up_add(o1, self.lateral4(res4))
        o3 = self._up_add(o2, self.lateral3(res3))
        return self._up_add(o3, self.lateral2(res2))  # (B, out_dim, H/4, W/4)


class ResNetFPN(nn.Module):
    """(B, C, H, W) normalised image -> (B, out_dim, ceil(H/4), ceil(W/4)) raw (un-normalised) features."""

    def __init__(self, in_channels: int = 3, out_dim: int = 128, width: int = 64):
        super().__init__()
        # width 64 is ResNet-18 (the paper's, ImageNet weights); smaller widths (e.g. 32: stages 32/64/128/256)
        # are a cheaper trunk of the same shape for CPU training, always from random init.
        widths = (width, 2 * width, 4 * width, 8 * width)
        self.backbone = resnet18(in_channels=in_channels) if width == 64 else ResNet(
            (2, 2, 2, 2), in_channels=in_channels, widths=widths)
        self.decoder = FPNDecoder(self.backbone.out_channels, out_dim)  # type: ignore[arg-type]
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone(x))


def from_official_key(key: str) -> str:
    """Map an official PiCIE state-dict key (``module.backbone.*``, ``module.decoder.layerN.*``) onto ours."""
    key = key.removeprefix("module.")
    parts = key.split(".")
    if len(parts) >= 2 and parts[0] == "decoder" and parts[1] in _OFFICIAL_DECODER_NAMES:
        parts[1] = _OFFICIAL_DECODER_NAMES[parts[1]]
    return ".".join(parts)


def load_imagenet_backbone(net: ResNetFPN, path: str | Path) -> None:
    """Load torchvision ``resnet18`` ImageNet weights from a local file into ``net.backbone``.

    The first conv is adapted to the net's input channels (:func:`adapt_first_conv`). Raises CheckpointError
    naming the file and the missing / unexpected / mis-shaped keys when the file is not a resnet18 state dict.
    """
    state = read_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    in_channels = net.backbone.conv1.weight.shape[1]
    if "conv1.weight" in state and state["conv1.weight"].ndim == 4:
        state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], in_channels)
    try:
        load_torchvision_state_dict(net.backbone, state, source=str(path))
    except StateDictMismatchError as err:
        raise CheckpointError(str(err)) from err
    logger.info("loaded ImageNet resnet18 weights from %s (%d input channels)", path, in_channels)
