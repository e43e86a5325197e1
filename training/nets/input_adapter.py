"""The first module of every inference net: [0, 1] image -> the tensor the trunk was trained on.

Normalisation and IIC's Sobel channels live here, inside the net, so export bakes them into the graph and the
runtime feeds raw frames (mismatched preprocessing between training and deployment is the export bug the
anchors' trackers report most).

``per_image=True`` (not in any paper; off by default) standardises each frame by its own statistics instead of the
fixed mean/std: every channel of every image minus its spatial mean, divided by its spatial standard deviation.
Inspection frames vary in exposure from frame to frame while defects are relative (NEU-Seg: dark inclusions and
patches, bright scratches on backgrounds whose brightness varies a lot). It exports as ReduceMean/Sqrt/Div ops,
so the runtime still feeds raw frames and needs to know nothing about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

SobelMode = Literal["off", "append", "replace"]

# IIC's sobel_process (code/utils/cluster/transforms.py): cross-correlation kernels, zero padding 1.
_SOBEL_DX = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
_SOBEL_DY = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
# cv2.COLOR_RGB2GRAY weights, as IIC computes its grey channel.
_GREY_WEIGHTS = (0.299, 0.587, 0.114)
# Variance floor of the per-image standardisation (std floor 1e-3, a quarter of one 8-bit grey level): a flat
# frame maps to zeros instead of NaN.
PER_IMAGE_EPS = 1e-6

COLOR_ORDER = {1: "gray", 3: "rgb", 4: "rgbi"}  # input channels -> ModelMeta colour order
SOBEL_MODES = ("off", "append", "replace")


def check_input_config(owner: str, channels: int, sobel: str, input_mean: Sequence[float] | None,
                       input_std: Sequence[float] | None) -> None:
    """The input fields a method config shares with :class:`InputAdapter`; ``owner`` names the config in errors."""
    from training.errors import ConfigError

    if channels not in COLOR_ORDER:
        raise ConfigError(f"{owner}.channels must be 1 (grey), 3 (RGB) or 4 (RGBIR), got {channels}")
    if sobel not in SOBEL_MODES:
        raise ConfigError(f"{owner}.sobel must be 'off', 'append' or 'replace', got {sobel!r}")
    for name, value in (("input_mean", input_mean), ("input_std", input_std)):
        if value is not None and len(value) != channels:
            raise ConfigError(f"{owner}.{name} needs {channels} values, got {value}")
    if input_std is not None and min(input_std) <= 0:
        raise ConfigError(f"{owner}.input_std must be positive, got {input_std}")


def sobel_xy(grey: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 2, H, W): IIC's dx and dy Sobel maps."""
    kernel = torch.tensor((_SOBEL_DX, _SOBEL_DY), dtype=grey.dtype, device=grey.device).unsqueeze(1)
    return F.conv2d(grey, kernel, padding=1)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W). One channel is returned as is; RGB uses cv2's weights."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] < 3:
        raise ValueError(f"cannot make grey from {x.shape[1]} channels")
    w = torch.tensor(_GREY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x[:, :3] * w).sum(dim=1, keepdim=True)


def standardise_per_image(x: torch.Tensor, eps: float = PER_IMAGE_EPS) -> torch.Tensor:
    """(B, C, H, W) -> each channel of each image minus its spatial mean, over sqrt(spatial variance + eps)."""
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    var = (centred * centred).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1), population variance
    return centred / torch.sqrt(var + eps)


class InputAdapter(nn.Module):
    """(B, C, H, W) float in [0, 1] -> normalised channels, plus Sobel channels per ``sobel``.

    ``sobel="append"``: [normalised image channels, dx, dy] (IIC's RGB+Sobel, 5 channels for RGB).
    ``sobel="replace"``: [dx, dy] only (IIC's sobel_process on a grey-only input).
    Sobel maps are computed on the un-normalised grey image, as IIC does (its images are only divided by 255).
    ``per_image=True``: each frame is standardised by its own per-channel mean/std (:func:`standardise_per_image`)
    in place of ``mean``/``std`` (which then only give the channel count), and the Sobel maps are computed on the
    standardised grey image, so that edges are relative to the frame's contrast too.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], sobel: SobelMode = "off",
                 per_image: bool = False):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean {mean} and std {std} differ in length")
        if sobel not in ("off", "append", "replace"):
            raise ValueError(f"sobel must be 'off', 'append' or 'replace', got {sobel!r}")
        self.sobel = sobel
        self.per_image = bool(per_image)
        self.in_channels = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        return {"off": self.in_channels, "append": self.in_channels + 2, "replace": 2}[self.sobel]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1]
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        if self.per_image:
            x = standardise_per_image(x)
            normalised = x
        else:
            normalised = (x - self.mean) / self.std
        if self.sobel == "off":
            return normalised
        edges = sobel_xy(to_grey(x))
        if self.sobel == "replace":
            return edges
        return torch.cat([normalised, edges], dim=1)
