"""ResNet-18 in torchvision's parameter layout, returning the four stage outputs.

Built here because torchvision does not import beside the pinned torch. Parameter names match torchvision's
``resnet18`` (``conv1``, ``bn1``, ``layerN.M.conv1`` ... ``downsample.0/1``) so an ImageNet state dict in that
layout loads with :func:`load_torchvision_state_dict`. ``stem="cifar"`` swaps the 7x7/2 conv + max-pool for a
3x3/1 conv (InfoSeg's encoder, docs/METHODS.md §4.3); it then has no ImageNet weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with BasicBlocks. ``forward`` returns ``[res2, res3, res4, res5]``.

    With ``stem="imagenet"`` these are at strides 4, 8, 16, 32; with ``stem="cifar"`` at 1, 2, 4, 8.
    """

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), in_channels: int = 3,
                 widths: tuple[int, ...] = (64, 128, 256, 512), stem: Literal["imagenet", "cifar"] = "imagenet"):
        super().__init__()
        self.stem_kind = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (n_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(inplanes, width, stride)] + [BasicBlock(width, width) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = width
        self.out_channels = tuple(widths)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's init: kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


def resnet18(in_channels: int = 3, stem: Literal["imagenet", "cifar"] = "imagenet") -> ResNet:
    return ResNet((2, 2, 2, 2), in_channels=in_channels, stem=stem)


class StateDictMismatchError(ValueError):
    """A weight file does not fit the network (missing/unexpected keys or wrong shapes)."""


def load_torchvision_state_dict(net: ResNet, state: Mapping[str, torch.Tensor], *, source: str = "state dict") -> None:
    """Load torchvision ``resnet18`` weights (the ``fc.*`` classifier is ignored).

    Raises StateDictMismatchError naming the missing, unexpected and mis-shaped keys.
    """
    own = net.state_dict()
    given = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = sorted(f"{k}: file {tuple(given[k].shape)} vs net {tuple(own[k].shape)}"
                    for k in set(own) & set(given) if tuple(given[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise StateDictMismatchError(f"{source} is not a torchvision resnet18 state dict for this net: "
                                     + "; ".join(parts))
    net.load_state_dict({k: given[k] for k in own}, strict=True)
