"""IIC's segmentation network "SegmentationNet10a(TwoHead)": a VGG-style trunk and two sets of 1x1 softmax heads.

Ji, Henriques, Vedaldi, ICCV 2019, supplementary "Architecture". Official code (MIT): github.com/xu-ji/IIC,
``code/archs/segmentation/net10a.py`` L13-80, ``net10a_twohead.py``, ``code/archs/cluster/vgg.py`` L4-54
(docs/METHODS.md §2.5). Module names mirror the official ones so that ``state_dict()`` keys are the official keys
(``trunk.features.<i>.*``, ``head_A.heads.<s>.0.weight``).

Facts from the official code kept on purpose (do not "fix"):

* Every 3x3 conv has padding 1, also the two with dilation 2, so each of those shrinks the map by 2 pixels:
  the trunk output is (H/2 - 4) x (W/2 - 4) (60x60 for a 128 input).
* The 1x1 head conv has **padding=1** and no bias: its output has a ring of exact zeros, i.e. a uniform 1/K
  softmax, around the (H/2 - 2) x (W/2 - 2) map, before the bilinear upsampling to the input size.

Not in the paper: ``width`` scales every trunk width (CPU presets use 0.25-0.5); 1.0 is the paper's net.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (out_channels, dilation) per 3x3 conv, "M" for a 2x2 max-pool (official cfg of SegmentationNet10aTrunk)
TRUNK_CFG: tuple[tuple[int, int] | str, ...] = ((64, 1), (128, 1), "M", (256, 1), (256, 1), (512, 2), (512, 2))
STRIDE = 2  # one max-pool
SHRINK = 4  # pixels lost (per side pair) at the trunk's resolution by the two dilated convs with padding 1


def trunk_output_size(size: int) -> int:
    """Spatial side of the trunk's output for an input side ``size``."""
    return size // STRIDE - SHRINK


def min_input_size() -> int:
    """Smallest input side for which the trunk output has at least one pixel."""
    return STRIDE * (SHRINK + 1)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class Net10aTrunk(nn.Module):
    """(B, C_in, H, W) -> (B, 512·width, H/2 - 4, W/2 - 4): conv3x3-BN-ReLU blocks, one max-pool."""

    def __init__(self, in_channels: int, width: float = 1.0, track_running_stats: bool = True):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in TRUNK_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out, dilation = item
            out = _scaled(out, width)
            # padding 1 even for dilation 2 (official): the map shrinks by 2 pixels at each dilated conv
            layers += [nn.Conv2d(channels, out, kernel_size=3, stride=1, padding=1, dilation=dilation, bias=False),
                       nn.BatchNorm2d(out, track_running_stats=track_running_stats),
                       nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class Net10aHead(nn.Module):
    """``num_sub_heads`` x [1x1 conv (padding 1, no bias), Softmax2d], each upsampled bilinearly to ``size``.

    ``padding=0`` (with a bias) is the head on a backbone's feature map (not the paper's): no ring of uniform
    probabilities around the map."""

    def __init__(self, in_channels: int, n_clusters: int, num_sub_heads: int = 1, padding: int = 1):
        super().__init__()
        if n_clusters < 1 or num_sub_heads < 1:
            raise ValueError(f"need n_clusters >= 1 and num_sub_heads >= 1, got {n_clusters}, {num_sub_heads}")
        self.n_clusters = n_clusters
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, n_clusters, kernel_size=1, stride=1, padding=padding,
                                    bias=padding == 0),
                          nn.Softmax2d())
            for _ in range(num_sub_heads))

    @property
    def num_sub_heads(self) -> int:
        return len(self.heads)

    def logits(self, features: torch.Tensor, sub_head: int = 0) -> torch.Tensor:
        """(B, C, h, w) -> (B, K, h+2, w+2) pre-softmax map (outer ring exactly 0)."""
        return self.heads[sub_head][0](features)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
        """(B, C, h, w) -> one (B, K, *size) probability map per sub-head."""
        return [upsample_probs(head(features), size) for head in self.heads]


def upsample_probs(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling with align_corners=False (the official ``F.interpolate`` default); stays a
    distribution per pixel because bilinear weights are convex."""
    return F.interpolate(probs, size=size, mode="bilinear", align_corners=False)


class SegmentationNet10aTwoHead(nn.Module):
    """The trunk with head A (over-clustering, ``k_A``) and head B (``k_B``, the evaluated head).

    ``forward(x, head="A"|"B")`` returns a list with one (B, K, H, W) probability map per sub-head, at the input
    resolution. ``x`` is what :class:`~training.nets.input_adapter.InputAdapter` produces (e.g. RGB + Sobel).
    """

    def __init__(self, in_channels: int, k_A: int, k_B: int, num_sub_heads: int = 1, width: float = 1.0,
                 track_running_stats: bool = True, head_padding: int = 1):
        super().__init__()
        self.trunk = Net10aTrunk(in_channels, width=width, track_running_stats=track_running_stats)
        self.head_A = Net10aHead(self.trunk.out_channels, k_A, num_sub_heads, padding=head_padding)
        self.head_B = Net10aHead(self.trunk.out_channels, k_B, num_sub_heads, padding=head_padding)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init (vgg.py L42-54): kaiming_normal_(fan_in, relu) for convs, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def head(self, name: str) -> Net10aHead:
        if name not in ("A", "B"):
            raise ValueError(f"head must be 'A' or 'B', got {name!r}")
        return self.head_A if name == "A" else self.head_B

    def forward(self, x: torch.Tensor, head: str = "B") -> list[torch.Tensor]:
        if min(x.shape[-2:]) < min_input_size():
            raise ValueError(f"Net10a needs inputs of at least {min_input_size()}x{min_input_size()} pixels, "
                             f"got {tuple(x.shape[-2:])}")
        return self.head(head)(self.trunk(x), (x.shape[-2], x.shape[-1]))


class BackboneTwoHead(nn.Module):
    """IIC's two heads (1x1 convs, no padding) on a dense backbone: the same interface as
    :class:`SegmentationNet10aTwoHead` (``trunk``, ``head(name)``), for ``method_config.backbone``."""

    def __init__(self, trunk: nn.Module, k_A: int, k_B: int, num_sub_heads: int = 1):
        super().__init__()
        self.trunk = trunk
        self.head_A = Net10aHead(trunk.out_channels, k_A, num_sub_heads, padding=0)
        self.head_B = Net10aHead(trunk.out_channels, k_B, num_sub_heads, padding=0)

    def head(self, name: str) -> Net10aHead:
        if name not in ("A", "B"):
            raise ValueError(f"head must be 'A' or 'B', got {name!r}")
        return self.head_A if name == "A" else self.head_B


class Net10aInferenceNet(nn.Module):
    """The plain inference module: adapter -> trunk -> one sub-head -> softmax -> upsample to the input size.

    float32 (B, C, H, W) in [0, 1] -> (B, K, H, W) cluster probabilities. Shares the weights it is given.
    """

    def __init__(self, adapter: nn.Module, trunk: Net10aTrunk, sub_head: nn.Sequential):
        super().__init__()
        self.adapter = adapter
        self.trunk = trunk
        self.head = sub_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.head(self.trunk(self.adapter(x)))  # (B, K, H/2 - 2, W/2 - 2)
        return upsample_probs(probs, (x.shape[-2], x.shape[-1]))
