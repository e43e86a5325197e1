"""The baseline rows every method must beat: per-pixel k-means and a randomly initialised CNN + k-means.

Neither baseline has a trainable parameter. "Training" is one k-means fit of centroids (buffers) on pixel
features sampled from the training images (:meth:`KMeansBaseline.fit_centroids`, run by ``on_epoch_start`` over
``ctx.train_loader`` the first time, or called directly). They evaluate and export through the same
:meth:`~training.methods.base.Method.inference_net` path as every method:

    InputAdapter -> features f (B, D, h, w) -> logits -||f - c_k||^2 / T (B, K, h, w)
                 -> [bilinear upsampling when h, w < H, W] -> softmax (B, K, H, W)

so the argmax is the nearest centroid (at input resolution, or of the upsampled logits). The logits are computed
as the 1x1 convolution ``(2 <f, c_k> - ||c_k||^2) / T`` (the per-pixel ``||f||^2`` is the same for every k and
cancels in the softmax); ``temperature`` T only shapes the probabilities, never the argmax.

* ``kmeans`` (the classic baseline; IIC, Ji et al. 2019, reports "K-means" and "Random CNN" rows for
  segmentation): a pixel's feature is its normalised channel values. Normalisation is the fixed per-channel
  mean/std of the InputAdapter (grey: 0.449 / 0.226, RGB: ImageNet's, as PiCIE); k-means is invariant to one
  shift and scale of all features, so for grey images the normalisation does not change the clustering.
  Variants, not the headline row:
  ``features: patch`` (the p x p neighbourhood's normalised values, reflect-padded, D = C p^2) and
  ``features: local_stats`` (value, p x p mean and p x p standard deviation per channel, D = 3C).
* ``random_cnn``: PiCIE's ResNet-18 + FPN (``training.nets.resnet_fpn``) at its random initialisation, i.e.
  "PiCIE before training", in eval mode (BatchNorm with its initial running statistics is the identity).
  ``upsample: logits`` (default) is PiCIE's own inference graph (official ``commons.py::evaluate``): the stride-4
  features are L2-normalised and clustered at stride 4, and the nearest-centroid logits are upsampled to the
  input resolution (bilinear, align_corners=False) before the softmax. ``upsample: features`` upsamples the
  128-d features to the input resolution first, L2-normalises each input pixel's feature and clusters those:
  per-pixel features in the literal sense, but 128 channels at full resolution cost about as much CPU time again
  as the whole net, so it is the variant, not the default.

k-means: PiCIE's :class:`~training.methods.picie.kmeans.MiniBatchKMeans` (k-means++ seeding, Lloyd iterations).
Each image contributes ``pixels_per_image`` random pixels. When the loader has a length, every batch of the pass
is pooled (bounded by ``kmeans_max_points``, subsampled evenly across batches) and clustered with
``kmeans_iters`` Lloyd iterations: plain k-means on a uniform pixel sample. Without a length, the first
``kmeans_init_batches`` batches are pooled and the rest update the centroids with PiCIE's mini-batch rule.

Seeds: ``seed: null`` draws from the global torch RNG (the engine's convention); an int makes the random net's
weights, the pixel sample and the k-means++ seeding depend on that seed alone.

In the engine (``python -m training fit``) a baseline fits on the first ``on_epoch_start`` and its training steps
change nothing: the loss is the batch's k-means distortion, a leaf tensor so that ``backward`` is a no-op, and
:meth:`configure_optimizer` returns an optimiser over an empty parameter group.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import ConfigError, TrainingError
from training.evaluation import pad_to_multiple
from training.methods.base import FitContext, Method, MethodConfig, register_method
from training.methods.picie.kmeans import MiniBatchKMeans, assign
from training.nets.backbones import DenseBackbone, backbone_normalisation, build_backbone
from training.nets.input_adapter import InputAdapter, imagenet_normalisation
from training.nets.resnet_fpn import ResNetFPN
from usseg_sdk.meta import InputSpec

logger = logging.getLogger(__name__)

_COLOR_ORDER = {1: "gray", 3: "rgb"}
PIXEL_FEATURES = ("pixel", "patch", "local_stats")


@dataclass
class KMeansBaselineConfig(MethodConfig):
    """Per-pixel k-means. ``n_clusters`` is the main head's K (Hungarian when it equals the classes)."""

    over_clusters: int = 0  # K of a second k-means on the same features ("over" head, many-to-one); 0 = none
    features: str = "pixel"  # "pixel" (headline), "patch" or "local_stats" (variants)
    patch_size: int = 3  # neighbourhood side for "patch" / "local_stats" (odd)
    temperature: float = 1.0  # probabilities = softmax(-squared distance / temperature)
    seed: int | None = None  # null = global torch RNG; int = this seed alone decides the fit
    pixels_per_image: int | None = 256  # random pixels each image gives k-means; null = every pixel
    kmeans_max_points: int = 200_000  # bound on the pooled points k-means clusters
    kmeans_iters: int = 50  # Lloyd iterations after k-means++ seeding
    kmeans_init_batches: int = 20  # only for loaders without a length: batches pooled before streaming updates
    kmeans_chunk_size: int = 65536  # points per distance chunk (memory chunk x K)

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.channels not in _COLOR_ORDER:
            raise ConfigError(f"{name}.channels must be 1 or 3, got {self.channels}")
        if self.n_clusters < 2 or self.over_clusters < 0 or self.over_clusters == 1:
            raise ConfigError(f"{name}: n_clusters must be >= 2 and over_clusters 0 or >= 2, got "
                              f"{self.n_clusters} / {self.over_clusters}")
        if self.features not in PIXEL_FEATURES:
            raise ConfigError(f"{name}.features must be one of {list(PIXEL_FEATURES)}, got {self.features!r}")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ConfigError(f"{name}.patch_size must be an odd number >= 1, got {self.patch_size}")
        if not self.temperature > 0:
            raise ConfigError(f"{name}.temperature must be > 0, got {self.temperature}")
        if self.pixels_per_image is not None and self.pixels_per_image < 1:
            raise ConfigError(f"{name}.pixels_per_image must be >= 1 or null, got {self.pixels_per_image}")
        if self.kmeans_max_points < max(self.n_clusters, self.over_clusters):
            raise ConfigError(f"{name}.kmeans_max_points ({self.kmeans_max_points}) must be at least K")
        if self.kmeans_iters < 0 or self.kmeans_init_batches < 1 or self.kmeans_chunk_size < 1:
            raise ConfigError(f"{name}: kmeans_iters must be >= 0, kmeans_init_batches and kmeans_chunk_size >= 1")


@dataclass
class RandomCNNBaselineConfig(KMeansBaselineConfig):
    """Random-init ResNet-18 + FPN features + k-means (``features`` / ``patch_size`` are not used)."""

    feature_dim: int = 128  # FPN output channels
    upsample: str = "logits"  # "logits" (PiCIE's inference graph) or "features" (see the module docstring)
    pixels_per_image: int | None = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.features != "pixel":
            raise ConfigError("RandomCNNBaselineConfig.features must stay 'pixel' (the CNN makes the features)")
        if self.feature_dim < 1:
            raise ConfigError(f"RandomCNNBaselineConfig.feature_dim must be >= 1, got {self.feature_dim}")
        if self.upsample not in ("logits", "features"):
            raise ConfigError(f"RandomCNNBaselineConfig.upsample must be 'logits' or 'features', got "
                              f"{self.upsample!r}")


# -- feature extractors and the inference graph ------------------------------------------------------------
class PixelFeatures(nn.Module):
    """(B, C, H, W) normalised image -> (B, D, H, W): the pixel itself, its patch, or local statistics."""

    def __init__(self, channels: int, kind: str, patch_size: int):
        super().__init__()
        self.kind = kind
        self.pad = patch_size // 2
        self.patch_size = patch_size
        self.out_dim = {"pixel": channels, "patch": channels * patch_size**2, "local_stats": 3 * channels}[kind]
        if kind == "patch":  # one-hot kernels: output channel (c, i, j) copies input channel c at offset (i, j)
            eye = torch.eye(channels * patch_size**2).view(-1, channels, patch_size, patch_size)
            self.register_buffer("patch_kernel", eye, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "pixel":
            return x
        padded = F.pad(x, (self.pad,) * 4, mode="reflect")
        if self.kind == "patch":
            return F.conv2d(padded, self.patch_kernel)  # (B, C p^2, H, W)
        mean = F.avg_pool2d(padded, self.patch_size, stride=1)  # (B, C, H, W)
        mean_sq = F.avg_pool2d(padded * padded, self.patch_size, stride=1)
        std = (mean_sq - mean * mean).clamp_min(0).add(1e-12).sqrt()
        return torch.cat([x, mean, std], dim=1)  # (B, 3C, H, W)


class RandomCNNFeatures(nn.Module):
    """(B, C, H, W) normalised image -> unit-norm CNN features (B, D, H/4, W/4), or (B, D, H, W) with
    ``upsample=True`` (bilinear upsampling before the normalisation)."""

    def __init__(self, net: ResNetFPN, upsample: bool):
        super().__init__()
        self.net = net
        self.upsample = upsample
        self.out_dim = net.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.net(x)  # (B, D, H/4, W/4)
        if self.upsample:
            feats = F.interpolate(feats, size=x.shape[-2:], mode="bilinear", align_corners=False)  # (B, D, H, W)
        return F.normalize(feats, dim=1)


class BackboneFeatures(nn.Module):
    """A frozen dense backbone's fused stride-4 features (``method_config.backbone``), as k-means sees them."""

    def __init__(self, backbone: DenseBackbone):
        super().__init__()
        self.backbone = backbone
        self.out_dim = backbone.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, D, H/4, W/4)


class NearestCentroidLogits(nn.Module):
    """(B, D, h, w) features -> -(||f - c_k||^2 - ||f||^2) / T (B, K, h, w), as a 1x1 convolution.

    ``centroids`` is the method's buffer (the same tensor), so a refit is seen by an existing inference net."""

    def __init__(self, centroids: torch.Tensor, temperature: float):
        super().__init__()
        self.register_buffer("centroids", centroids)
        self.temperature = temperature

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        c = self.centroids.to(feats.dtype)  # (K, D)
        weight = (2.0 / self.temperature) * c[:, :, None, None]  # (K, D, 1, 1)
        bias = -(c * c).sum(dim=1) / self.temperature  # (K,)
        return F.conv2d(feats, weight, bias)  # (B, K, h, w)


class BaselineInferenceNet(nn.Module):
    """float32 (B, C, H, W) in [0, 1] -> nearest-centroid probabilities (B, K, H, W) at the input resolution.

    ``upsample_logits``: the features are coarser than the input; the logits are upsampled bilinearly."""

    def __init__(self, adapter: InputAdapter, features: nn.Module, logits: NearestCentroidLogits,
                 upsample_logits: bool):
        super().__init__()
        self.adapter = adapter
        self.features = features
        self.logits = logits
        self.upsample_logits = upsample_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(self.features(self.adapter(x)))  # (B, K, h, w)
        if self.upsample_logits:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)  # (B, K, H, W)


# -- the methods ----------------------------------------------------------------------------------------------
@register_method("kmeans")
class KMeansBaseline(Method):
    """Per-pixel k-means on normalised channel values (or a patch / local-statistics variant)."""

    config_class = KMeansBaselineConfig
    gradient_free = True  # fitted at the first epoch start; the engine stops after one step
    config: KMeansBaselineConfig

    def __init__(self, config: KMeansBaselineConfig):
        super().__init__(config)
        self.adapter = config.input.adapter(config.channels, normalisation(config.channels))
        with seeded_rng(config.seed):
            self.features = self.build_features()
        self.features.requires_grad_(False).eval()
        for head, k in self.eval_heads().items():
            self.register_buffer(_centroid_name(head), torch.zeros(k, self.features.out_dim))
        self.register_buffer("fit_points", torch.zeros((), dtype=torch.int64))  # 0 = not fitted yet
        self._kmeans_losses: dict[str, float] = {}

    def build_features(self) -> nn.Module:
        c = self.config
        if c.backbone is not None:  # k-means on a (pretrained, frozen) backbone's features
            if c.backbone.train != "frozen" or c.features != "pixel":
                raise ConfigError(f"{type(c).__name__}: k-means on a backbone takes backbone.train: frozen and "
                                  "features: pixel")
            backbone, self.adapter = build_backbone(c, type(c).__name__)
            return BackboneFeatures(backbone)
        return PixelFeatures(c.channels, c.features, c.patch_size)

    @property
    def fitted(self) -> bool:
        return int(self.fit_points) > 0

    @property
    def _device(self) -> torch.device:
        return self.fit_points.device

    def train(self, mode: bool = True) -> KMeansBaseline:
        super().train(mode)
        self.features.eval()  # a fixed feature extractor: BatchNorm keeps its running statistics
        return self

    # -- fitting -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_centroids(self, batches: Iterable[dict[str, torch.Tensor] | torch.Tensor],
                      ctx: FitContext | None = None) -> dict[str, float]:
        """Fit every head's centroids on pixels sampled from ``batches`` (dicts with ``"image"`` or image
        tensors (B, C, H, W) in [0, 1]). Returns each head's k-means distortion (mean squared distance)."""
        c = self.config
        self.prepare_backbones()
        seed = c.seed if c.seed is not None else int(torch.randint(0, 2**62, (1,)))
        gen = torch.Generator().manual_seed(seed)
        init_batches = _length(batches) or c.kmeans_init_batches
        reduce = ctx.all_reduce_sum if ctx is not None else (lambda t: t)
        rank = ctx.rank if ctx is not None else 0
        kms = {head: MiniBatchKMeans(k, init_batches=init_batches, init_iters=c.kmeans_iters,
                                     max_init_points=c.kmeans_max_points, chunk_size=c.kmeans_chunk_size,
                                     generator=gen, all_reduce_sum=reduce, rank=rank)
               for head, k in self.eval_heads().items()}
        n_points = 0
        for images in _images(batches, c.channels, self._device):
            points = self._sample_points(self.fit_features(images), gen)  # (N, D)
            n_points += points.shape[0]
            for km in kms.values():
                km.add(points)
        try:
            fitted = {head: km.finish() for head, km in kms.items()}
        except ValueError as err:
            raise TrainingError(f"{self.name} k-means failed: {err} (give more images or pixels_per_image)") from err
        for head, centroids in fitted.items():
            getattr(self, _centroid_name(head)).copy_(centroids)
        self.fit_points.fill_(n_points)
        self._kmeans_losses = {head: km.loss for head, km in kms.items()}
        logger.info("%s: k-means on a sample of %d pixels (pool capped at %d, seed %d), distortion %s", self.name,
                    n_points, c.kmeans_max_points, seed,
                    {h: round(v, 6) for h, v in self._kmeans_losses.items()})
        return dict(self._kmeans_losses)

    def fit_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> features (B, D, h, w) as the inference net computes them at evaluation: the
        images padded to the stride (reflect, as ``training.evaluation`` and the runtime do), the padding's
        features dropped."""
        h, w = images.shape[-2:]
        padded = pad_to_multiple(images, self.input_spec().stride)
        feats = self.features(self.adapter(padded))  # (B, D, h', w')
        keep_h = math.ceil(h * feats.shape[-2] / padded.shape[-2])
        keep_w = math.ceil(w * feats.shape[-1] / padded.shape[-1])
        return feats[..., :keep_h, :keep_w]

    def _sample_points(self, feats: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(B, D, H, W) -> (N, D): ``pixels_per_image`` random pixels of each image (every pixel when null)."""
        b, d, h, w = feats.shape
        points = feats.permute(0, 2, 3, 1).reshape(b, h * w, d)
        n = self.config.pixels_per_image
        if n is not None and n < h * w:
            keep = torch.rand(b, h * w, generator=gen).topk(n, dim=1).indices.to(points.device)  # (B, n)
            points = points.gather(1, keep.unsqueeze(-1).expand(-1, -1, d))
        return points.reshape(-1, d)

    # -- engine hooks (no optimiser steps; see the module docstring) -----------------------------------------
    def on_epoch_start(self, ctx: FitContext) -> None:
        if self.fitted:
            return
        if ctx.train_loader is None:
            raise TrainingError(f"{self.name} fits k-means over ctx.train_loader, which is None")
        ctx.log({f"kmeans_loss_{head}": v for head, v in self.fit_centroids(ctx.train_loader, ctx).items()})

    def training_step(self, batch: dict[str, torch.Tensor], ctx: FitContext) -> dict[str, Any]:
        if not self.fitted:
            raise TrainingError(f"{self.name} has no centroids: call on_epoch_start(ctx) or fit_centroids() first")
        images = next(_images([batch], self.config.channels, self._device))
        with torch.no_grad():
            points = self.fit_features(images).permute(0, 2, 3, 1).reshape(-1, self.features.out_dim)
            _, dists = assign(points, self.centroids, self.config.kmeans_chunk_size)
        return {"loss": dists.mean().requires_grad_()}  # a leaf: backward changes nothing

    def extra_state(self) -> dict[str, Any]:
        return {"kmeans_losses": dict(self._kmeans_losses)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._kmeans_losses = dict(state.get("kmeans_losses", {}))

    # -- inference -------------------------------------------------------------------------------------------
    def eval_heads(self) -> dict[str, int]:
        heads = {"main": self.config.n_clusters}
        if self.config.over_clusters:
            heads["over"] = self.config.over_clusters
        return heads

    def inference_net(self, head: str = "main") -> nn.Module:
        if head not in self.eval_heads():
            raise ConfigError(f"{self.name} has heads {sorted(self.eval_heads())}, not {head!r}")
        if not self.fitted:
            raise TrainingError(f"{self.name} has no centroids yet: fit it first (fit_centroids or on_epoch_start)")
        logits = NearestCentroidLogits(getattr(self, _centroid_name(head)), self.config.temperature)
        return BaselineInferenceNet(self.adapter, self.features, logits, self.upsamples_logits).eval()

    @property
    def upsamples_logits(self) -> bool:
        """Whether the features are coarser than the input (so the logits are upsampled)."""
        return self.config.backbone is not None

    def input_spec(self) -> InputSpec:
        c = self.config
        if c.backbone is not None:
            stride = self.features.backbone.stride
            return c.input.spec(c.channels, stride=stride, min_size=stride, default=backbone_normalisation(c))
        min_size = 1 if c.features == "pixel" else c.patch_size // 2 + 1  # reflect padding needs pad < size
        return c.input.spec(c.channels, stride=1, min_size=min_size, default=normalisation(c.channels))


@register_method("random_cnn")
class RandomCNNBaseline(KMeansBaseline):
    """k-means on the per-pixel features of a randomly initialised ResNet-18 + FPN ("PiCIE before training")."""

    config_class = RandomCNNBaselineConfig
    config: RandomCNNBaselineConfig

    def build_features(self) -> nn.Module:
        c = self.config
        return RandomCNNFeatures(ResNetFPN(in_channels=c.channels, out_dim=c.feature_dim),
                                 upsample=c.upsample == "features")

    @property
    def upsamples_logits(self) -> bool:
        return self.config.upsample == "logits"

    def input_spec(self) -> InputSpec:
        c = self.config
        return c.input.spec(c.channels, stride=32, min_size=32, default=normalisation(c.channels))


# -- small pieces -------------------------------------------------------------------------------------------
def normalisation(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The InputAdapter's default mean/std: PiCIE's grey channel average for 1 channel, ImageNet's for RGB."""
    return imagenet_normalisation(channels)


@contextlib.contextmanager
def seeded_rng(seed: int | None) -> Iterator[None]:
    """Inside: the global CPU torch RNG seeded with ``seed`` (restored afterwards); ``None`` leaves it alone."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _centroid_name(head: str) -> str:
    return "centroids" if head == "main" else f"centroids_{head}"


def _length(batches: Iterable[Any]) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def _images(batches: Iterable[dict[str, torch.Tensor] | torch.Tensor], channels: int, device: torch.device
            ) -> Iterator[torch.Tensor]:
    """Float (B, C, H, W) images of each batch, checked."""
    for batch in batches:
        images = batch["image"] if isinstance(batch, dict) else batch
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != channels:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise TrainingError(f"baseline batches need images (B, {channels}, H, W), got {got}")
        yield images.to(device, torch.float32)
