"""Anomaly-first defect discovery on the frozen pretrained trunk (registered as ``anomaly``; docs/METHODS.md §9).

On an inspection line the split that matters is "normal surface" against a few kinds of rare defect. Clustering
objectives that balance cluster sizes spend their clusters on background texture. This method decides "normal or
not" first, from how far a patch is from the normal patches seen in training (PatchCore's memory bank, Roth et al.,
CVPR 2022), and only then clusters what is not normal into defect kinds (AnomalyNCD's order, CVPR 2025). No gradient
step: like the ``kmeans`` baseline it fits once, in ``on_epoch_start`` (or :meth:`AnomalyDiscovery.fit_centroids`).

Features (:class:`PatchFeatures`): the frozen trunk's taps (presets: Lite0 stages 1 and 2, 24 + 40 channels at
strides 4 and 8), each L2-normalised over channels, resized bilinearly to the ``grid_stride`` grid (8),
concatenated, then a p x p local average (PatchCore's neighbourhood aggregation, p = 3): (B, D, H/8, W/8).

Fit, on the training frames (labels unused):

1. The patches of up to ``max_images`` frames (``patches_per_image`` random ones each, or all; float16 in memory).
2. Bank cleaning. An unlabelled defect set has defects in the training frames (NEU-Seg: one in every frame, 12 %
   of the pixels), so a bank of all training patches calls defects normal. Each patch is scored against
   ``score_references`` *other* frames, as MuSc does (Li et al., ICLR 2024): its distance to the nearest patch of
   each reference frame, averaged over the smallest ``score_keep`` fraction of those distances. The
   ``drop_fraction`` most anomalous patches never enter the bank.
3. The bank: ``bank_size`` of the rest, by PatchCore's greedy k-center coreset (``coreset: kcenter``, on a Gaussian
   projection to ``coreset_projection`` dimensions) or at random (``coreset: random``, the presets: it keeps the
   patches' density, which is what separates defects on NEU-Seg, where defect kinds recur across frames and a
   k-center bank covers them too; §9.2). A pool smaller than ``bank_size`` is repeated cyclically.
4. Anomaly score = mean *squared* distance to the ``k_nearest`` nearest bank entries (PatchCore: the distance to the
   nearest; presets: 8 nearest). Squared, because the square root's slope at 0 turns float32 rounding of the
   cancellation ||f||^2 - 2 f.b + ||b||^2 (onnxruntime and torch sum in different orders) into probability
   differences past the export check's 1e-4 for patches that sit on a bank entry. Threshold
   tau = the ``threshold_quantile`` quantile of the training patches' scores: the unsupervised default, a line's
   expected defect share. It is baked into the graph; calibration names clusters, it does not move tau.
5. Clusters: PiCIE's k-means (:mod:`training.methods.picie.kmeans`) over the features of the training patches
   scoring above tau gives the defect clusters (``n_clusters - 1`` for the main head); the main head has one normal
   cluster. The "over" head has ``over_normal_clusters`` clusters of the patches at or below tau and
   ``over_clusters - over_normal_clusters`` of those above, so that a defect kind the gate misses can still be named
   from a normal cluster by calibration, while the anomalous 12 % get half the clusters.

Inference graph (:class:`AnomalyInferenceNet`), all plain ops, at the feature grid then upsampled:

    s = mean_k max(0, ||f||^2 - top_k (2 f.b_m - ||b_m||^2))          # 1x1 conv with the bank, ReduceMax / TopK
    n_k = (2 f.c_k - ||c_k||^2) / T,  m_j = (2 f.a_j - ||a_j||^2) / T  # defect / normal centroids (1x1 convs)
    logits = [m_j - max m, n_k - max n + gate_scale * (s / tau - 1)]   # (B, K, h, w); one normal: m = [0]
    probabilities = softmax(bilinear_upsample(logits))

The largest normal logit is 0 and the largest defect logit is ``gate_scale * (s / tau - 1)``, so before upsampling
the argmax is the nearest normal centroid when s <= tau and otherwise the nearest defect centroid; ``gate_scale``
and T shape only the probabilities. The score map itself is :meth:`AnomalyDiscovery.anomaly_map` (torch); the
exported graph carries the decision, not the score as an output (the runtime's outputs are clusters, labels and
class scores; adding one was left out).

Departures: PatchCore re-weights the image score by the neighbourhood of the nearest entry (image-level only; we
score pixels), uses WideResNet-50 layers 2-3 and k = 1 on a k-center bank; MuSc scores test images against each
other at test time (here it only cleans the training bank, so that inference needs one frame).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import ConfigError, TrainingError
from training.evaluation import pad_to_multiple
from training.methods.base import FitContext, Method, MethodConfig, register_method
from training.methods.baselines import NearestCentroidLogits, _centroid_name, _images
from training.methods.picie.kmeans import MiniBatchKMeans, full_precision_matmul
from training.nets.backbones import BackboneConfig, DenseBackbone, backbone_normalisation
from usseg_sdk.meta import InputSpec

logger = logging.getLogger(__name__)


def _default_backbone() -> BackboneConfig:
    return BackboneConfig(name="efficientnet_lite0", taps=(2, 4), fusion="concat", train="frozen")


@dataclass
class AnomalyConfig(MethodConfig):
    """Anomaly score from a cleaned, coreset-subsampled memory bank; defect kinds by k-means over anomalous patches."""

    backbone: BackboneConfig | None = field(default_factory=_default_backbone)  # frozen trunk; taps fused at the finest
    over_clusters: int = 0  # K of the "over" head (over_normal_clusters normal + the rest defect clusters); 0 = none
    over_normal_clusters: int = 1  # clusters of the normal patches in the "over" head (the main head has one)
    grid_stride: int | None = 8  # stride of the feature grid the taps are resized to; null = the finest tap's
    aggregate: int = 3  # p x p local average of the features (PatchCore's neighbourhood); 1 = none
    max_images: int = 1000  # training frames whose patches are kept for the fit
    patches_per_image: int | None = None  # random patches each frame keeps (null = all; bounds memory and time on
    #                                       large frames: a 256x1600 frame has 6400 stride-8 patches)
    score_references: int = 8  # other frames each frame's patches are compared with (bank cleaning)
    score_keep: float = 0.5  # fraction of the smallest reference distances averaged into a patch's cleaning score
    drop_fraction: float = 0.15  # most anomalous share of the training patches kept out of the bank
    bank_size: int = 4096  # memory-bank entries after the coreset
    coreset: str = "kcenter"  # "kcenter" (PatchCore's greedy k-center) | "random" (keeps the patches' density)
    k_nearest: int = 1  # anomaly score = mean distance to this many nearest bank entries (PatchCore: 1)
    coreset_candidates: int = 100_000  # random pool the greedy k-center coreset picks from
    coreset_projection: int = 128  # Gaussian projection dimensions of the coreset distances; 0 = none
    threshold_quantile: float = 0.88  # anomaly threshold = this quantile of the training patches' scores
    gate_scale: float = 5.0  # sharpness of the normal/defect logits (never changes the argmax)
    temperature: float = 1.0  # of the defect nearest-centroid logits (never changes the argmax)
    seed: int | None = None  # null = global torch RNG; int = this seed alone decides the fit
    kmeans_iters: int = 50  # Lloyd iterations of the defect k-means
    kmeans_max_points: int = 200_000  # bound on the anomalous patches clustered
    chunk_size: int = 4096  # patches per distance chunk

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.backbone is None:
            raise ConfigError(f"{name}.backbone must name a trunk (the method scores its features)")
        if self.backbone.train != "frozen" or self.backbone.fusion != "concat":
            raise ConfigError(f"{name}.backbone takes train: frozen and fusion: concat (nothing trains)")
        # BackboneConfig.check's other rules hold; its "concat needs a stride-4 tap" does not (we fuse at the finest
        # tap's stride), so the check runs on a copy that names another fusion.
        dataclasses.replace(self.backbone, fusion="fpn").check(name)
        if self.n_clusters < 2 or self.over_clusters < 0 or self.over_clusters == 1:
            raise ConfigError(f"{name}: n_clusters must be >= 2 and over_clusters 0 or >= 2, got "
                              f"{self.n_clusters} / {self.over_clusters}")
        if self.coreset not in ("kcenter", "random"):
            raise ConfigError(f"{name}.coreset must be 'kcenter' or 'random', got {self.coreset!r}")
        if not 1 <= self.k_nearest <= self.bank_size:
            raise ConfigError(f"{name}.k_nearest must be in 1..bank_size ({self.bank_size}), got {self.k_nearest}")
        if self.grid_stride is not None and self.grid_stride < 1:
            raise ConfigError(f"{name}.grid_stride must be >= 1 or null, got {self.grid_stride}")
        if self.aggregate < 1 or self.aggregate % 2 == 0:
            raise ConfigError(f"{name}.aggregate must be an odd number >= 1, got {self.aggregate}")
        if self.patches_per_image is not None and self.patches_per_image < 1:
            raise ConfigError(f"{name}.patches_per_image must be >= 1 or null, got {self.patches_per_image}")
        if self.max_images < 2 or self.score_references < 1 or self.bank_size < 1 or self.coreset_candidates < 1:
            raise ConfigError(f"{name}: max_images must be >= 2; score_references, bank_size and coreset_candidates "
                              ">= 1")
        for field_name in ("score_keep", "threshold_quantile"):
            if not 0.0 < getattr(self, field_name) <= 1.0:
                raise ConfigError(f"{name}.{field_name} must be in (0, 1], got {getattr(self, field_name)}")
        if not 0.0 <= self.drop_fraction < 1.0:
            raise ConfigError(f"{name}.drop_fraction must be in [0, 1), got {self.drop_fraction}")
        if self.coreset_projection < 0 or self.kmeans_iters < 0 or self.chunk_size < 1:
            raise ConfigError(f"{name}: coreset_projection and kmeans_iters must be >= 0, chunk_size >= 1")
        if not (self.gate_scale > 0 and self.temperature > 0):
            raise ConfigError(f"{name}: gate_scale and temperature must be > 0")
        if self.over_clusters and not 1 <= self.over_normal_clusters < self.over_clusters:
            raise ConfigError(f"{name}.over_normal_clusters must be in 1..{self.over_clusters - 1}, "
                              f"got {self.over_normal_clusters}")
        if self.kmeans_max_points < max(self.n_clusters, self.over_clusters):
            raise ConfigError(f"{name}.kmeans_max_points ({self.kmeans_max_points}) must be at least K")


# -- the pure pieces (tested against numpy references) ----------------------------------------------------------
def nearest_distance(points: torch.Tensor, bank: torch.Tensor, chunk_size: int = 4096, k: int = 1,
                     squared: bool = False) -> torch.Tensor:
    """(N, D), (M, D) -> (N,) mean Euclidean distance (``squared``: squared distance) of each point to its ``k``
    nearest bank rows."""
    b = bank.float()
    b_sq = (b * b).sum(dim=1)  # (M,)
    out = []
    with full_precision_matmul():
        for x in points.split(chunk_size):
            x = x.float()
            d2 = (x * x).sum(dim=1, keepdim=True) - 2 * x @ b.T + b_sq  # (n, M)
            nearest = d2.amin(dim=1, keepdim=True) if k == 1 else d2.topk(k, dim=1, largest=False).values  # (n, k)
            nearest = nearest.clamp_min(0)
            out.append((nearest if squared else nearest.sqrt()).mean(dim=1))
    return torch.cat(out) if out else points.new_zeros(0)


def cross_image_scores(patches: list[torch.Tensor], references: int, keep: float, gen: torch.Generator,
                       chunk_size: int = 4096) -> list[torch.Tensor]:
    """MuSc-style score of every patch: ``patches[i]`` (n_i, D) against ``references`` other images (all of them when
    fewer): per reference image the distance to its nearest patch, then the mean of the smallest ``ceil(keep * R)``
    of those R distances. Returns one (n_i,) tensor per image."""
    n = len(patches)
    if n < 2:
        raise TrainingError("bank cleaning compares each frame with other frames: give at least 2 frames")
    r = min(references, n - 1)
    n_keep = max(1, math.ceil(keep * r))
    scores = []
    for i, own in enumerate(patches):
        others = torch.randperm(n - 1, generator=gen)[:r]
        others = others + (others >= i).long()  # skip image i itself
        dists = torch.stack([nearest_distance(own, patches[int(j)], chunk_size) for j in others], dim=1)  # (n_i, R)
        scores.append(dists.sort(dim=1).values[:, :n_keep].mean(dim=1))
    return scores


def drop_most_anomalous(points: torch.Tensor, scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The rows of ``points`` (N, ...) without the ``round(fraction * N)`` highest ``scores`` (N,); at least one row."""
    n_keep = max(1, points.shape[0] - round(points.shape[0] * fraction))
    return points[scores.argsort()[:n_keep]]


def greedy_coreset(points: torch.Tensor, size: int, gen: torch.Generator, first: int | None = None) -> torch.Tensor:
    """Greedy k-center (farthest-point) selection: indices (size,) into ``points`` (N, D). Starts at ``first`` (a
    random point when None) and adds, each time, the point farthest from those chosen (PatchCore's coreset)."""
    n = points.shape[0]
    size = min(size, n)
    x = points.float()
    x_sq = (x * x).sum(dim=1)  # (N,)
    start = int(torch.randint(0, n, (1,), generator=gen)) if first is None else first
    chosen = [start]
    min_d2 = torch.full((n,), float("inf"))
    with full_precision_matmul():
        for _ in range(size - 1):
            c = x[chosen[-1]]
            d2 = x_sq - 2 * (x @ c) + c.dot(c)  # (N,)
            min_d2 = torch.minimum(min_d2, d2)
            chosen.append(int(min_d2.argmax()))
    return torch.tensor(chosen, dtype=torch.int64)


# -- the inference graph --------------------------------------------------------------------------------------
class PatchFeatures(nn.Module):
    """(B, C, H, W) normalised, H and W multiples of the trunk's stride -> (B, D, H/s, W/s), s = ``grid_stride``
    (default the finest tap's stride): taps L2-normalised, resized bilinearly to that grid (a stride-4 tap on a
    stride-8 grid: the mean of each 2 x 2 block), concatenated, then a p x p local average."""

    def __init__(self, backbone: DenseBackbone, aggregate: int, grid_stride: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.aggregate = aggregate
        self.grid_stride = grid_stride or min(backbone.config.tap_strides())
        if backbone.stride % self.grid_stride:
            raise ConfigError(f"grid_stride {self.grid_stride} must divide the trunk's input stride {backbone.stride} "
                              f"(taps {backbone.taps})")
        self.out_dim = backbone.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.backbone.stride or x.shape[-1] % self.backbone.stride:
            raise ValueError(f"{self.backbone.config.name} with taps {self.backbone.taps} needs sides that are "
                             f"multiples of {self.backbone.stride}, got {tuple(x.shape[-2:])}")
        stages = self.backbone.trunk(x)
        grid = (x.shape[-2] // self.grid_stride, x.shape[-1] // self.grid_stride)
        feats = self.backbone.fusion([stages[t] for t in self.backbone.taps], grid)  # (B, D, h, w)
        if self.aggregate > 1:
            feats = F.avg_pool2d(feats, self.aggregate, stride=1, padding=self.aggregate // 2,
                                 count_include_pad=False)
        return feats


class BankDistance(nn.Module):
    """(B, D, h, w) features -> (B, 1, h, w) mean squared distance to the k nearest bank entries, as a 1x1 convolution +
    ReduceMax (k = 1) or TopK.

    The convolution's weight 2 B and bias -||b||^2 are computed here, once, so that the exported graph holds them as
    constants (the exporter does not fold a product with a bank-sized tensor); build a new one after a refit."""

    def __init__(self, bank: torch.Tensor, k: int = 1):
        super().__init__()
        self.k = k
        self.register_buffer("weight", 2.0 * bank.detach().clone()[:, :, None, None])  # (M, D, 1, 1)
        self.register_buffer("bias", -(bank.detach() * bank.detach()).sum(dim=1))  # (M,)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        sim = F.conv2d(feats, self.weight.to(feats.dtype), self.bias.to(feats.dtype))  # (B, M, h, w): 2 f.b - |b|^2
        top = sim.amax(dim=1, keepdim=True) if self.k == 1 else sim.topk(self.k, dim=1).values  # (B, k, h, w)
        d2 = (feats * feats).sum(dim=1, keepdim=True) - top  # (B, k, h, w) squared distances to the k nearest
        return d2.clamp_min(0).mean(dim=1, keepdim=True)  # (B, 1, h, w)


class AnomalyInferenceNet(nn.Module):
    """float32 (B, C, H, W) in [0, 1] -> probabilities (B, K, H, W): the normal clusters first (one, or the nearest of
    ``normal``'s centroids), then the defect clusters; the gate decides between the two groups."""

    def __init__(self, adapter: nn.Module, features: PatchFeatures, distance: BankDistance,
                 defects: NearestCentroidLogits, threshold: torch.Tensor, gate_scale: float,
                 normal: NearestCentroidLogits | None = None):
        super().__init__()
        self.adapter, self.features, self.distance, self.defects = adapter, features, distance, defects
        self.normal = normal
        self.register_buffer("threshold", threshold)
        self.gate_scale = gate_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(self.adapter(x))  # (B, D, h, w)
        gate = self.gate_scale * (self.distance(feats) / self.threshold - 1.0)  # (B, 1, h, w), > 0 iff anomalous
        near = self.defects(feats)  # (B, K - n_normal, h, w)
        if self.normal is None:
            normal = torch.zeros_like(gate)  # (B, 1, h, w)
        else:
            normal = self.normal(feats)  # (B, n_normal, h, w)
            normal = normal - normal.amax(dim=1, keepdim=True)
        logits = torch.cat([normal, near - near.amax(dim=1, keepdim=True) + gate], dim=1)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)  # (B, K, H, W)


# -- the method -------------------------------------------------------------------------------------------------
@register_method("anomaly")
class AnomalyDiscovery(Method):
    """Memory-bank anomaly score, a threshold, and k-means over the anomalous patches (module docstring)."""

    config_class = AnomalyConfig
    gradient_free = True  # fitted at the first epoch start; the engine stops after one step
    config: AnomalyConfig

    def __init__(self, config: AnomalyConfig):
        super().__init__(config)
        c = config
        self.adapter = c.input.adapter(c.channels, backbone_normalisation(c))
        self.features = PatchFeatures(DenseBackbone(c.backbone, c.channels),  # type: ignore[arg-type]
                                      c.aggregate, c.grid_stride)
        self.features.requires_grad_(False).eval()
        d = self.features.out_dim
        self.register_buffer("bank", torch.zeros(c.bank_size, d))
        self.register_buffer("threshold", torch.ones(()))
        for head, k in self.eval_heads().items():
            n_normal = self.normal_clusters(head)
            self.register_buffer(_centroid_name(head), torch.zeros(k - n_normal, d))  # defect clusters
            if n_normal > 1:
                self.register_buffer(_normal_name(head), torch.zeros(n_normal, d))
        self.register_buffer("fit_points", torch.zeros((), dtype=torch.int64))  # 0 = not fitted yet
        self._fit_log: dict[str, float] = {}

    @property
    def fitted(self) -> bool:
        return int(self.fit_points) > 0

    @property
    def _device(self) -> torch.device:
        return self.fit_points.device

    def train(self, mode: bool = True) -> AnomalyDiscovery:
        super().train(mode)
        self.features.eval()
        return self

    # -- fitting -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_centroids(self, batches: Iterable[dict[str, torch.Tensor] | torch.Tensor],
                      ctx: FitContext | None = None) -> dict[str, float]:
        """Fit bank, threshold and defect centroids on ``batches`` (dicts with ``"image"`` or image tensors (B, C, H,
        W) in [0, 1]); the name is the baselines' (the accuracy benchmark fits every baseline through it). Returns
        the fit's figures (bank size, threshold, share dropped, k-means distortions)."""
        c = self.config
        self.prepare_backbones()
        seed = c.seed if c.seed is not None else int(torch.randint(0, 2**62, (1,)))
        gen = torch.Generator().manual_seed(seed)
        patches = self._collect_patches(batches, gen)  # one (n_i, D) float16 tensor per frame
        cleaning = cross_image_scores(patches, c.score_references, c.score_keep, gen, c.chunk_size)
        flat = torch.cat(patches)  # (N, D)
        flat_scores = torch.cat(cleaning)  # (N,)
        clean = drop_most_anomalous(flat, flat_scores, c.drop_fraction)
        self.bank.copy_(self._coreset(clean, gen).to(self.bank))
        sample = flat[torch.randperm(flat.shape[0], generator=gen)[:c.kmeans_max_points]].to(self._device)
        scores = nearest_distance(sample, self.bank, c.chunk_size, c.k_nearest, squared=True)
        self.threshold.fill_(max(float(torch.quantile(scores.float().cpu(), c.threshold_quantile)), 1e-6))
        k_max = max(self.eval_heads().values())
        anomalous = sample[scores > self.threshold].float()
        if anomalous.shape[0] < k_max:
            anomalous = sample[scores.argsort(descending=True)[:k_max]].float()
        normal = sample[scores <= self.threshold].float()
        if normal.shape[0] < k_max:
            normal = sample[scores.argsort()[:k_max]].float()
        log = {"bank_patches": float(clean.shape[0]), "threshold": float(self.threshold),
               "anomalous_share": float((scores > self.threshold).float().mean())}
        for head, k in self.eval_heads().items():
            n_normal = self.normal_clusters(head)
            fits = [(_centroid_name(head), anomalous, k - n_normal)]
            if n_normal > 1:
                fits.append((_normal_name(head), normal, n_normal))
            for buffer, points, n in fits:
                km = MiniBatchKMeans(n, init_batches=1, init_iters=c.kmeans_iters, max_init_points=c.kmeans_max_points,
                                     chunk_size=65536, generator=gen)
                km.add(points)
                getattr(self, buffer).copy_(km.finish())
                log[f"kmeans_loss_{buffer}"] = km.loss
        self.fit_points.fill_(flat.shape[0])
        self._fit_log = log
        logger.info("%s: %d patches of %d frames, bank %d, threshold %.4f, %.1f %% anomalous (seed %d)", self.name,
                    flat.shape[0], len(patches), c.bank_size, float(self.threshold), 100 * log["anomalous_share"], seed)
        return dict(log)

    def _collect_patches(self, batches: Iterable[dict[str, torch.Tensor] | torch.Tensor], gen: torch.Generator
                         ) -> list[torch.Tensor]:
        """One (n, D) float16 tensor per frame (its patches, or ``patches_per_image`` random ones), ``max_images``
        frames at most."""
        c = self.config
        patches: list[torch.Tensor] = []
        for images in _images(batches, c.channels, self._device):
            feats = self.fit_features(images)  # (B, D, h, w)
            for f in feats:
                points = f.flatten(1).T.to(torch.float16).cpu()  # (h w, D)
                if c.patches_per_image is not None and c.patches_per_image < points.shape[0]:
                    points = points[torch.randperm(points.shape[0], generator=gen)[:c.patches_per_image]]
                patches.append(points)
                if len(patches) == c.max_images:
                    return patches
        return patches

    def _coreset(self, clean: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(N, D) cleaned patches -> (bank_size, D) bank: greedy k-center on a random pool, or the pool's first
        ``bank_size`` (``coreset: random``); repeated cyclically when short (then, with k_nearest > 1, a patch's k
        nearest can hold duplicates)."""
        c = self.config
        pool = clean[torch.randperm(clean.shape[0], generator=gen)[:c.coreset_candidates]].float()
        if c.coreset == "random":
            picked = pool[:c.bank_size]
        else:
            projected = pool
            if c.coreset_projection and c.coreset_projection < pool.shape[1]:
                proj = torch.randn(pool.shape[1], c.coreset_projection, generator=gen) / math.sqrt(c.coreset_projection)
                projected = pool @ proj
            picked = pool[greedy_coreset(projected, c.bank_size, gen)]
        reps = math.ceil(c.bank_size / picked.shape[0])
        return picked.repeat(reps, 1)[:c.bank_size]

    def fit_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> features (B, D, h, w) as the inference net computes them at evaluation: padded
        to the stride (reflect, as ``training.evaluation`` and the runtime do), the padding's features dropped."""
        h, w = images.shape[-2:]
        padded = pad_to_multiple(images, self.input_spec().stride)
        feats = self.features(self.adapter(padded))
        keep_h = math.ceil(h * feats.shape[-2] / padded.shape[-2])
        keep_w = math.ceil(w * feats.shape[-1] / padded.shape[-1])
        return feats[..., :keep_h, :keep_w]

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> anomaly score (B, H, W): the k-nearest-bank score, bilinearly upsampled from
        the feature grid (the frames padded to the stride as at evaluation, the padding cropped)."""
        self._require_fit()
        h, w = images.shape[-2:]
        padded = pad_to_multiple(images.to(self._device, torch.float32), self.input_spec().stride)
        score = BankDistance(self.bank, self.config.k_nearest)(self.features(self.adapter(padded)))  # (B, 1, h', w')
        score = F.interpolate(score, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return score[:, 0, :h, :w]

    # -- engine hooks (no optimiser steps, as the baselines) ------------------------------------------------------
    def on_epoch_start(self, ctx: FitContext) -> None:
        if self.fitted:
            return
        if ctx.train_loader is None:
            raise TrainingError(f"{self.name} fits its memory bank over ctx.train_loader, which is None")
        if ctx.distributed:  # each rank would fit its own bank on its shard: no reduction is implemented
            raise TrainingError(f"{self.name} fits in one process; run it without DDP (it has no gradient steps)")
        ctx.log(self.fit_centroids(ctx.train_loader, ctx))

    def training_step(self, batch: dict[str, torch.Tensor], ctx: FitContext) -> dict[str, Any]:
        self._require_fit()
        images = next(_images([batch], self.config.channels, self._device))
        with torch.no_grad():
            feats = self.fit_features(images)
            points = feats.flatten(2).transpose(1, 2).reshape(-1, feats.shape[1])
            scores = nearest_distance(points, self.bank, self.config.chunk_size, self.config.k_nearest, squared=True)
        return {"loss": scores.mean().requires_grad_()}  # a leaf: backward changes nothing

    def extra_state(self) -> dict[str, Any]:
        return {"fit_log": dict(self._fit_log)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._fit_log = dict(state.get("fit_log", {}))

    # -- inference -------------------------------------------------------------------------------------------------
    def eval_heads(self) -> dict[str, int]:
        heads = {"main": self.config.n_clusters}
        if self.config.over_clusters:
            heads["over"] = self.config.over_clusters
        return heads

    def inference_net(self, head: str = "main") -> nn.Module:
        if head not in self.eval_heads():
            raise ConfigError(f"{self.name} has heads {sorted(self.eval_heads())}, not {head!r}")
        self._require_fit()
        t = self.config.temperature
        defects = NearestCentroidLogits(getattr(self, _centroid_name(head)), t)
        normal = NearestCentroidLogits(getattr(self, _normal_name(head)), t) if self.normal_clusters(head) > 1 else None
        return AnomalyInferenceNet(self.adapter, self.features, BankDistance(self.bank, self.config.k_nearest), defects,
                                   self.threshold, self.config.gate_scale, normal).eval()

    def normal_clusters(self, head: str) -> int:
        """How many of ``head``'s clusters are normal (they come first)."""
        return self.config.over_normal_clusters if head == "over" else 1

    def _require_fit(self) -> None:
        if not self.fitted:
            raise TrainingError(f"{self.name} has no memory bank yet: fit it first (fit_centroids or on_epoch_start)")
        if not bool(self.features.backbone.weights_ready):
            raise TrainingError(f"{self.name}: the trunk has no pretrained weights (prepare_backbones())")

    def input_spec(self) -> InputSpec:
        c = self.config
        stride = self.features.backbone.stride
        return c.input.spec(c.channels, stride=stride, min_size=stride, default=backbone_normalisation(c))


def _normal_name(head: str) -> str:
    return f"normal_centroids_{head}"
