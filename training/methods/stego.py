"""STEGO — correlation distillation on a frozen pretrained trunk (Hamilton, Zhang, Hariharan, Snavely, Freeman,
"Unsupervised Semantic Segmentation by Distilling Feature Correspondences", ICLR 2022); docs/METHODS.md §8.

A light head (1x1 linear + 1x1-ReLU-1x1, summed; ``code_dim`` outputs) on the frozen fused features f of
``backbone`` learns codes whose cosine correlations follow the features' own (loss: :mod:`training.losses.stego`)
between an image and itself, one of its k nearest-neighbour images, and random images. Clusters are k-means on the
L2-normalised codes, refitted during training; the inference graph is

    InputAdapter -> frozen trunk + fusion f -> head -> L2 norm -> nearest centroid (1x1 conv) -> bilinear -> softmax

Partner bank (:class:`PartnerBank`, our departure; the paper loads the neighbour image itself). At fit start one
pass over ``ctx.train_loader`` keeps ``bank_images`` images: each one's global descriptor (the mean of its fused
features, L2-normalised; the official kNN descriptor is also a pooled, normalised feature) and the frozen features
of ``bank_points`` random pixels. The trunk is frozen, so these never go stale, and a training step runs the trunk
on its own batch only: the kNN partner of each image is one of the ``knn`` bank images nearest to its descriptor
(itself excluded by dataset index), the random partners are random bank images, and their codes come from the head
applied to the stored points. The bank is rebuilt (deterministically: first images of the loader's epoch-0 order,
points from a generator seeded with ``seed``) at every fit start, resume included; it is never checkpointed.

Clusters (our choice; the paper trains a cluster probe jointly by minibatch spherical k-means on detached codes):
k-means++ and Lloyd (``training.methods.picie.kmeans``) on the normalised codes of up to ``kmeans_points`` bank
points, refitted every ``cluster_every`` steps and at the run's last step (``on_step_end``), and once at fit start
so that the model always has centroids. The same algorithm as the k-means rows, on the same kind of pixel sample,
so the comparison with ``kmeans`` on the raw features isolates what the head learnt; centroids are buffers, so
evaluation, checkpoints, resume and export need nothing else. A run stopped by a wall-clock cap between refits
keeps centroids up to ``cluster_every - 1`` steps older than its head.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.data.photometric import PhotometricConfig, photometric_augment
from training.errors import ConfigError, TrainingError
from training.evaluation import pad_to_multiple
from training.losses.stego import correlation_term
from training.methods.base import FitContext, Method, MethodConfig, batch_images, register_method
from training.methods.baselines import BaselineInferenceNet, NearestCentroidLogits
from training.methods.picie.kmeans import MiniBatchKMeans
from training.nets.backbones import BackboneConfig, DenseBackbone, backbone_normalisation, build_backbone
from usseg_sdk.meta import InputSpec

logger = logging.getLogger(__name__)


@dataclass
class StegoConfig(MethodConfig):
    """STEGO's settings. Official names in brackets; defaults as docs/METHODS.md §8 says where they come from."""

    n_clusters: int = 4  # main head K (k-means on the codes)
    over_clusters: int = 20  # over-clustering head K (a second k-means); 0 = none
    channels: int = 1
    lr: float = 5e-4  # Adam [lr]
    backbone: BackboneConfig | None = field(default_factory=BackboneConfig)  # frozen, concat fusion: required
    code_dim: int = 32  # head outputs [dim: 70 on DINO ViT-S's 384-d features]
    feature_samples: int = 11  # random points per image side: N = feature_samples^2 per image [feature_samples]
    knn: int = 7  # nearest-neighbour images a positive partner is drawn from [num_neighbors]
    neg_samples: int = 5  # random partner images per image and step [neg_samples]
    weight_self: float = 0.67  # λ of the image-with-itself term [pos_intra_weight]
    weight_knn: float = 0.25  # [pos_inter_weight]
    weight_rand: float = 0.63  # [neg_inter_weight]
    shift_self: float = 0.18  # b of each term [pos_intra_shift, pos_inter_shift, neg_inter_shift]
    shift_knn: float = 0.12
    shift_rand: float = 0.46
    jitter_brightness: float = 0.0  # photometric jitter of the batch before the trunk (0 = none, as officially)
    jitter_contrast: float = 0.0
    bank_images: int | None = 1024  # images in the partner bank; null = one pass over every training image
    bank_points: int = 256  # frozen feature pixels kept per bank image
    cluster_every: int = 100  # k-means refit period in optimiser steps (and at the last step)
    kmeans_points: int = 50_000  # bank points the k-means sees
    kmeans_iters: int = 30  # Lloyd iterations after k-means++
    temperature: float = 0.1  # probabilities = softmax(-||ŝ - c||^2 / T); the argmax does not depend on it
    seed: int = 0  # bank points and k-means seeding (the k-means generator also takes the step)


class StegoHead(nn.Module):
    """(B, D, h, w) -> (B, code_dim, h, w): a 1x1 convolution plus 1x1 -> ReLU -> 1x1 (STEGO's "nonlinear"
    projection; the official applies Dropout2d(0.1) to its input in training, we do not)."""

    def __init__(self, in_dim: int, code_dim: int):
        super().__init__()
        self.linear = nn.Conv2d(in_dim, code_dim, 1)
        self.nonlinear = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, code_dim, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(feats) + self.nonlinear(feats)

    def points(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, N, D) feature points -> (B, N, code_dim) codes (the 1x1 convolutions on an N x 1 map)."""
        codes = self(feats.transpose(1, 2).unsqueeze(-1))  # (B, E, N, 1)
        return codes.squeeze(-1).transpose(1, 2)


class StegoCodes(nn.Module):
    """Frozen backbone -> head -> codes L2-normalised over channels: (B, C, H, W) normalised -> (B, E, H/4, W/4)."""

    def __init__(self, backbone: DenseBackbone, head: StegoHead):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.out_dim = head.linear.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)


@dataclass
class PartnerBank:
    """Frozen features of the partner images: descriptors (M, D) unit norm, points (M, P, D) float16, and the
    dataset index of each image (M,) (to keep an image from being its own neighbour)."""

    descriptors: torch.Tensor
    points: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return self.descriptors.shape[0]

    def gather(self, rows: torch.Tensor, n_points: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) bank rows -> (B, n_points, D) float32: ``n_points`` random stored points of each (global RNG)."""
        p = self.points.shape[1]
        cols = torch.rand(rows.shape[0], p, generator=generator).argsort(dim=1)[:, :n_points]  # without replacement
        return self.points[rows.cpu().unsqueeze(1), cols].to(self.descriptors.device, torch.float32)

    def nearest(self, descriptors: torch.Tensor, indices: torch.Tensor | None, k: int) -> torch.Tensor:
        """(B, D) unit descriptors -> (B, k) bank rows of the k most similar images, each image's own row
        (same dataset index) excluded."""
        sims = descriptors @ self.descriptors.T  # (B, M)
        if indices is not None:
            sims = sims.masked_fill(indices.to(sims.device).unsqueeze(1) == self.indices.unsqueeze(0), -math.inf)
        return sims.topk(k, dim=1).indices


@register_method("stego")
class Stego(Method):
    """STEGO on a frozen trunk. Heads: ``"main"`` (k-means, n_clusters) and ``"over"`` (over_clusters)."""

    config_class = StegoConfig
    config: StegoConfig

    def __init__(self, config: StegoConfig):
        super().__init__(config)
        _validate(config)
        backbone, self.adapter = build_backbone(config, "StegoConfig")
        self.codes = StegoCodes(backbone, StegoHead(backbone.out_channels, config.code_dim))
        for head, k in self.eval_heads().items():
            self.register_buffer(_centroid_name(head), torch.zeros(k, config.code_dim))
        self.register_buffer("clustered_at", torch.tensor(-1, dtype=torch.int64))  # step of the last k-means; -1 never
        self._jitter = PhotometricConfig(brightness=config.jitter_brightness, contrast=config.jitter_contrast,
                                         saturation=0.0, hue=0.0)
        self.bank: PartnerBank | None = None

    @property
    def backbone(self) -> DenseBackbone:
        return self.codes.backbone

    @property
    def head(self) -> StegoHead:
        return self.codes.head

    # -- the partner bank and the clusters ---------------------------------------------------------------
    @torch.no_grad()
    def build_bank(self, batches: Iterable[dict[str, torch.Tensor]]) -> PartnerBank:
        """One pass over ``batches`` (training items with ``image`` and ``index``) until ``bank_images`` images."""
        c = self.config
        self.prepare_backbones()
        gen = torch.Generator().manual_seed(c.seed)
        with self._eval_mode():
            bank = self._bank_pass(batches, gen)
        self.bank = bank
        logger.info("STEGO: partner bank of %d images x %d points", len(bank), c.bank_points)
        return bank

    def _bank_pass(self, batches: Iterable[dict[str, torch.Tensor]], gen: torch.Generator) -> PartnerBank:
        c = self.config
        descriptors, points, indices, n = [], [], [], 0
        for batch in batches:
            images = batch_images(batch, "STEGO", c.channels).to(self._device)
            feats = self.frame_features(images)  # (B, D, h, w)
            b, d, h, w = feats.shape
            if h * w < c.bank_points:
                raise TrainingError(f"STEGO bank_points {c.bank_points} exceeds the {h}x{w} feature pixels of a "
                                    "training image (use larger crops or fewer bank_points)")
            descriptors.append(F.normalize(feats.mean(dim=(2, 3)), dim=1))
            flat = feats.flatten(2).transpose(1, 2)  # (B, h*w, D)
            cols = torch.rand(b, h * w, generator=gen).argsort(dim=1)[:, :c.bank_points].to(flat.device)
            points.append(flat.gather(1, cols.unsqueeze(-1).expand(-1, -1, d)).to("cpu", torch.float16))
            index = batch.get("index")
            indices.append(index.to(self._device) if isinstance(index, torch.Tensor)
                           else torch.arange(n, n + b, device=self._device))
            n += b
            if c.bank_images is not None and n >= c.bank_images:
                break
        if n < 2:
            raise TrainingError(f"STEGO's partner bank needs at least 2 training images, got {n}")
        keep = n if c.bank_images is None else min(n, c.bank_images)
        return PartnerBank(torch.cat(descriptors)[:keep], torch.cat(points)[:keep], torch.cat(indices)[:keep])

    @torch.no_grad()
    def fit_clusters(self, step: int) -> dict[str, float]:
        """k-means of every head on the normalised codes of the bank's points; returns each head's distortion."""
        bank = self._require_bank()
        c = self.config
        gen = torch.Generator().manual_seed(c.seed * 1_000_003 + step)
        pool = bank.points.reshape(-1, bank.points.shape[-1])  # (M P, D)
        if pool.shape[0] > c.kmeans_points:
            pool = pool[torch.randperm(pool.shape[0], generator=gen)[:c.kmeans_points]]
        with self._eval_mode():
            codes = F.normalize(self.head.points(pool.to(self._device, torch.float32).unsqueeze(0))[0], dim=1)
        losses = {}
        for head, k in self.eval_heads().items():
            km = MiniBatchKMeans(k, init_batches=1, init_iters=c.kmeans_iters, generator=gen)
            km.add(codes)
            getattr(self, _centroid_name(head)).copy_(km.finish())
            losses[head] = km.loss
        self.clustered_at.fill_(step)
        return losses

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode inside (the pretrained trunk's BatchNorm must never see a batch: a module starts in train
        mode, and hooks may run before the engine's first ``train()``), the previous mode restored after."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def _require_bank(self) -> PartnerBank:
        if self.bank is None:
            raise TrainingError("STEGO has no partner bank: on_fit_start(ctx) (or build_bank) builds it first")
        return self.bank

    # -- training ------------------------------------------------------------------------------------------
    def on_fit_start(self, ctx: FitContext) -> None:
        super().on_fit_start(ctx)
        if ctx.train_loader is None:
            raise TrainingError("STEGO builds its partner bank over ctx.train_loader, which is None")
        self.build_bank(ctx.train_loader)
        if int(self.clustered_at) < 0:  # a resumed run keeps its checkpoint's centroids
            ctx.log({f"kmeans_loss_{h}": v for h, v in self.fit_clusters(ctx.step).items()})

    def on_step_end(self, ctx: FitContext) -> None:
        if ctx.step % self.config.cluster_every == 0 or ctx.step == ctx.total_steps:
            ctx.log({f"kmeans_loss_{h}": v for h, v in self.fit_clusters(ctx.step).items()})

    def training_step(self, batch: dict[str, torch.Tensor], ctx: FitContext) -> dict[str, Any]:
        c = self.config
        bank = self._require_bank()
        images = batch_images(batch, "STEGO", c.channels)
        if c.jitter_brightness or c.jitter_contrast:
            with torch.no_grad():
                images = photometric_augment(images, self._jitter)
        with torch.no_grad():
            feats = self.frame_features(images)  # (B, D, h, w), no gradient (frozen trunk)
            anchor = _sample_points(feats, c.feature_samples ** 2)  # (B, N, D)
            descriptors = F.normalize(feats.mean(dim=(2, 3)), dim=1)  # (B, D)
            k = min(c.knn, len(bank) - 1)
            index = batch.get("index")
            neighbours = bank.nearest(descriptors, index if isinstance(index, torch.Tensor) else None, k)  # (B, k)
            pick = torch.randint(k, (feats.shape[0],)).to(neighbours.device)
            knn_rows = neighbours.gather(1, pick.unsqueeze(1)).squeeze(1)  # (B,)
        n = anchor.shape[1]
        codes = self.head.points(anchor)  # (B, N, E)
        loss_self = correlation_term(anchor, anchor, codes, codes, c.shift_self)
        knn_feats = bank.gather(knn_rows, n)
        loss_knn = correlation_term(anchor, knn_feats, codes, self.head.points(knn_feats), c.shift_knn)
        loss_rand = anchor.new_zeros(())
        for _ in range(c.neg_samples):
            rand_feats = bank.gather(torch.randint(len(bank), (feats.shape[0],)), n)
            loss_rand = loss_rand + correlation_term(anchor, rand_feats, codes, self.head.points(rand_feats),
                                                     c.shift_rand) / c.neg_samples
        loss = c.weight_self * loss_self + c.weight_knn * loss_knn + c.weight_rand * loss_rand
        return {"loss": loss, "loss_self": float(loss_self.detach()), "loss_knn": float(loss_knn.detach()),
                "loss_rand": float(loss_rand.detach())}

    def frame_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> frozen fused features (B, D, h, w): the images padded to the trunk's stride
        (reflect, as evaluation and the runtime do), the padding's features dropped."""
        h, w = images.shape[-2:]
        padded = pad_to_multiple(images, self.backbone.stride)
        feats = self.backbone(self.adapter(padded))
        keep_h = math.ceil(h * feats.shape[-2] / padded.shape[-2])
        keep_w = math.ceil(w * feats.shape[-1] / padded.shape[-1])
        return feats[..., :keep_h, :keep_w]

    @property
    def _device(self) -> torch.device:
        return self.clustered_at.device

    # -- inference -------------------------------------------------------------------------------------------
    def eval_heads(self) -> dict[str, int]:
        heads = {"main": self.config.n_clusters}
        if self.config.over_clusters:
            heads["over"] = self.config.over_clusters
        return heads

    def inference_net(self, head: str = "main") -> nn.Module:
        if head not in self.eval_heads():
            raise ConfigError(f"stego has heads {sorted(self.eval_heads())}, not {head!r}")
        if int(self.clustered_at) < 0:
            raise TrainingError("stego has no centroids yet: fit_clusters() (run at fit start) fits them")
        logits = NearestCentroidLogits(getattr(self, _centroid_name(head)), self.config.temperature)
        return BaselineInferenceNet(self.adapter, self.codes, logits, upsample_logits=True).eval()

    def input_spec(self) -> InputSpec:
        c = self.config
        stride = self.backbone.stride
        return c.input.spec(c.channels, stride=stride, min_size=stride, default=backbone_normalisation(c))


def _sample_points(feats: torch.Tensor, n: int) -> torch.Tensor:
    """(B, D, h, w) -> (B, n, D): ``n`` pixels of each map drawn uniformly with replacement (global RNG)."""
    b, d, h, w = feats.shape
    cols = torch.randint(h * w, (b, n)).to(feats.device)
    return feats.flatten(2).transpose(1, 2).gather(1, cols.unsqueeze(-1).expand(-1, -1, d))


def _centroid_name(head: str) -> str:
    return "centroids" if head == "main" else f"centroids_{head}"


def _validate(c: StegoConfig) -> None:
    name = "StegoConfig"
    c.input.check(name, c.channels)
    if c.backbone is None or c.backbone.train != "frozen" or c.backbone.fusion != "concat":
        raise ConfigError(f"{name}.backbone must be a frozen trunk with concat fusion (STEGO distils the frozen "
                          "features' correlations; a trained trunk or fpn fusion would change its own target)")
    if c.n_clusters < 2 or c.over_clusters < 0 or c.over_clusters == 1:
        raise ConfigError(f"{name}: n_clusters must be >= 2 and over_clusters 0 or >= 2, got "
                          f"{c.n_clusters} / {c.over_clusters}")
    positive = {"code_dim": c.code_dim, "feature_samples": c.feature_samples, "knn": c.knn,
                "bank_points": c.bank_points, "cluster_every": c.cluster_every, "kmeans_points": c.kmeans_points}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}.{key} must be >= 1, got {value}")
    if c.neg_samples < 0 or c.kmeans_iters < 0:
        raise ConfigError(f"{name}: neg_samples and kmeans_iters must be >= 0")
    if c.bank_images is not None and c.bank_images < 2:
        raise ConfigError(f"{name}.bank_images must be >= 2 or null, got {c.bank_images}")
    if c.feature_samples ** 2 > c.bank_points:
        raise ConfigError(f"{name}: feature_samples^2 = {c.feature_samples ** 2} points per partner exceed "
                          f"bank_points {c.bank_points}")
    if c.kmeans_points < max(c.n_clusters, c.over_clusters):
        raise ConfigError(f"{name}.kmeans_points must be at least the number of clusters")
    if not c.temperature > 0:
        raise ConfigError(f"{name}.temperature must be > 0, got {c.temperature}")
    for key in ("weight_self", "weight_knn", "weight_rand", "jitter_brightness", "jitter_contrast"):
        if getattr(c, key) < 0:
            raise ConfigError(f"{name}.{key} must be >= 0, got {getattr(c, key)}")
