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

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from usseg_sdk.meta import InputSpec

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


Normalisation = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per input channel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = 0.449, 0.226  # channel averages of ImageNet's, for grey and extra (IR) channels


def imagenet_normalisation(channels: int) -> Normalisation:
    """ImageNet's mean/std for RGB (plus their channel average for a 4th, IR channel); the average for grey."""
    if channels == 1:
        return (GREY_MEAN,), (GREY_STD,)
    extra = channels - 3
    return IMAGENET_MEAN + (GREY_MEAN,) * extra, IMAGENET_STD + (GREY_STD,) * extra


@dataclass
class InputConfig:
    """How a [0, 1] frame becomes the net's input: ``method_config.input``, the same fields for every method.

    ``mean`` / ``std`` None take the method's default (IIC, AC, InfoSeg: 0 / 1, IIC's "divide by 255 only"; PiCIE and
    the k-means baselines: ImageNet's, grey 0.449 / 0.226) or, on a pretrained backbone, the backbone's.
    """

    mean: tuple[float, ...] | None = None  # per input channel
    std: tuple[float, ...] | None = None  # per input channel, positive
    sobel: str = "off"  # "off" | "append" (image + dx, dy) | "replace" (dx, dy only)
    per_image_norm: bool = False  # standardise each frame by its own mean/std instead (not in any paper)
    native_size: int | None = None  # the training crop side, reported as the model's native size

    def check(self, owner: str, channels: int) -> None:
        """ConfigError naming ``owner`` (the config class) and the field when a value does not fit."""
        from training.errors import ConfigError

        if channels not in COLOR_ORDER:
            raise ConfigError(f"{owner}.channels must be 1 (grey), 3 (RGB) or 4 (RGBIR), got {channels}")
        if self.sobel not in SOBEL_MODES:
            raise ConfigError(f"{owner}.input.sobel must be 'off', 'append' or 'replace', got {self.sobel!r}")
        for name, value in (("mean", self.mean), ("std", self.std)):
            if value is not None and len(value) != channels:
                raise ConfigError(f"{owner}.input.{name} needs {channels} values, got {value}")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"{owner}.input.std must be positive, got {self.std}")
        if self.native_size is not None and self.native_size < 1:
            raise ConfigError(f"{owner}.input.native_size must be positive, got {self.native_size}")

    def normalisation(self, channels: int, default: Normalisation | None = None) -> Normalisation:
        """(mean, std) per channel: the configured values, else ``default``, else 0 / 1."""
        mean_default, std_default = default or ((0.0,) * channels, (1.0,) * channels)
        mean = tuple(float(v) for v in self.mean) if self.mean is not None else tuple(mean_default)
        std = tuple(float(v) for v in self.std) if self.std is not None else tuple(std_default)
        return mean, std

    def adapter(self, channels: int, default: Normalisation | None = None) -> InputAdapter:
        mean, std = self.normalisation(channels, default)
        return InputAdapter(mean, std, sobel=self.sobel, per_image=self.per_image_norm)  # type: ignore[arg-type]

    def spec(self, channels: int, *, stride: int, min_size: int, default: Normalisation | None = None,
             **extra: Any) -> InputSpec:
        """The model contract's input fields (``usseg_sdk.meta.InputSpec``) for a net of ``stride``."""
        mean, std = self.normalisation(channels, default)
        n = self.native_size
        return InputSpec(channels=channels, color_order=COLOR_ORDER[channels], mean=mean, std=std,  # type: ignore
                         sobel=self.sobel != "off", stride=stride, min_size=min_size,
                         native_size=(n, n) if n else None, **extra)


# Flat method_config keys of earlier versions -> their place now (checkpoints keep their config: still loadable).
LEGACY_INPUT_KEYS = {"mean": "input.mean", "std": "input.std", "input_mean": "input.mean", "input_std": "input.std",
                     "sobel": "input.sobel", "per_image_norm": "input.per_image_norm",
                     "native_size": "input.native_size"}


def migrate_legacy_keys(values: dict[str, Any], renames: dict[str, str], owner: str) -> dict[str, Any]:
    """``values`` with the keys of ``renames`` moved to their dotted new place (logged once per call)."""
    found = [k for k in renames if k in values]
    if not found:
        return values
    out = {k: v for k, v in values.items() if k not in renames}
    for key in found:
        *parents, last = renames[key].split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = values[key]
    logging.getLogger(__name__).warning("%s: old config keys %s read as %s", owner, found,
                                        [renames[k] for k in found])
    return out


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
