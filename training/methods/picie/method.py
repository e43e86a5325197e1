"""PiCIE: Pixel-level feature Clustering using Invariance and Equivariance (Cho, Mall, Bala, Hariharan, CVPR 2021).

Official code: janghyuncho/PiCIE (``train_picie.py``, ``commons.py``, ``data/*``); docs/METHODS.md §5 and its
quirks §P10-§P15 list what it does. Per epoch (:meth:`PiCIE.on_epoch_start`, Alg. 1 of the paper):

1. New per-index view tables (official ``reshuffle()``), seeded from the global torch RNG.
2. One pass over ``ctx.train_loader``: mini-batch k-means on the L2-normalised features of view 1 and of view 2
   (and, for PiCIE+H, a second k-means with ``over_clusters`` per view). Departure: the official code makes one
   pass per view; ours feeds both views from one pass (same statistics, half the data loading).
3. The net is frozen into ``label_net`` (a copy, always in eval mode). A counting pass labels every pixel of
   every view (nearest centroid) and turns the per-cluster counts into CE class weights.
4. Training steps: view 1 = f(G(P0(x))), view 2 = G(f(resize(P1(x)))); pseudo-labels come from ``label_net``
   on exactly the same views (the tables make them deterministic per index), which is what the official code
   reads back from its label files. Loss: ``training.losses.picie.picie_loss`` (Eq. 3-6).

Departure: the official code writes every pixel's label to disk once per epoch; we recompute labels in each step
from the frozen copy (two extra no-grad forwards per step, memory O(model) instead of O(dataset pixels)), which
also makes a resume inside an epoch exact: centroids, class weights and ``label_net`` are buffers of the
checkpoint, the table seed is in ``extra_state``.

At epoch end the inference centroids (``centroids``, ``centroids_over``) are refitted by k-means on
un-augmented images (``eval_centroids="refit"``, the official protocol for the final numbers, L295-338) or
copied from view 1's (``"view1"``, what the official per-epoch evaluation uses).

Official behaviours kept behind flags (defaults follow the paper's intent):
* ``official_proportional_weights``: CE weights proportional to cluster size (§P10); default inverse.
* ``official_no_grey``: the greyscale augmentation is never applied (§P11); default p_grey = 0.2.
* ``official_blur_sigma``: sigma = |3.8 (u - 0.5) + 0.1| (§P12); default U(0.1, 2.0).
* ``official_kmeans_train_mode``: k-means features with BatchNorm in train mode, updating its running
  statistics (§P14); default eval mode.
* ``official_dot_logits``: logits <f̂, c> while labels are nearest-centroid (§P15); default logits
  <f̂, c> - ||c||^2/2, whose argmax is the nearest centroid (inference graph included).
The faiss seed quirk (§P13) has no flag: our k-means init is seeded from the global RNG every epoch.

Input: 3-channel images are normalised with ImageNet mean/std (the pretrained trunk's); grey (1 channel) with
their channel average (0.449 / 0.226), and ImageNet weights then get their first conv summed over RGB (a grey
frame gives the response of that frame repeated on RGB). ImageNet weights (``pretrained_weights``, a local
torchvision-layout file) are read by :meth:`PiCIE.on_fit_start`, once per run. ``input_spec().stride`` is 32
(ResNet's res5). Before the first epoch ends the inference centroids are zeros (uniform probabilities).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from training.data.equivariant import EquivariantParams, equivariant_transform
from training.errors import ConfigError, DataError, TrainingError
from training.losses.picie import class_weights, nearest_centroid_labels, normalize_features, picie_loss
from training.methods.base import FitContext, Method, MethodConfig, batch_images, register_method
from training.methods.picie.inference import CentroidClassifier, PiCIEInferenceNet
from training.methods.picie.kmeans import MiniBatchKMeans
from training.methods.picie.views import (
    PHOTOMETRIC_COLUMNS,
    ViewSettings,
    ViewTables,
    geometric_params,
    net_input_size,
    photometric_view,
    resize,
)
from training.nets.backbones import DenseBackbone, backbone_normalisation, build_backbone
from training.nets.input_adapter import LEGACY_INPUT_KEYS, imagenet_normalisation
from training.nets.resnet_fpn import ResNetFPN, load_imagenet_backbone
from usseg_sdk.meta import InputSpec

logger = logging.getLogger(__name__)



@dataclass
class PiCIEConfig(MethodConfig):
    """PiCIE's settings; defaults are the official COCO-Stuff run's (docs/METHODS.md §5.7) with the paper's intent."""

    feature_dim: int = 128  # FPN output channels (in_dim)
    backbone_width: int = 64  # ResNet-18 stage widths w, 2w, 4w, 8w; 64 is the paper's (ImageNet weights)
    pretrained_weights: str | None = None  # local torchvision resnet18 file (.pth/.safetensors), read at fit start
    view_size: int | None = None  # shorter side both views enter the net at (official res 320); None = as given
    # views (official values)
    min_scale: float = 0.5
    h_flip: bool = True
    v_flip: bool = False
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.1
    p_jitter: float = 0.8
    p_grey: float = 0.2
    p_blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # k-means (official: 20 init batches of 256 images, update every batch, 20 init iterations)
    kmeans_init_batches: int = 20
    kmeans_batches_per_update: int = 1
    kmeans_init_iters: int = 20
    kmeans_pixels_per_image: int | None = None  # None = every feature pixel (official)
    kmeans_max_init_points: int | None = 1_000_000  # bound on the init pool (None = unbounded, official)
    kmeans_chunk_size: int = 65536  # points per distance chunk (memory chunk x K)
    # loss
    balance: bool = True  # CE class weights from cluster sizes (official --no_balance off)
    mse: bool = False  # add MSE(f̂1, f̂2) (official --mse, off in the paper)
    over_clusters: int = 0  # PiCIE+H: K_over of an auxiliary over-clustering (0 = off)
    over_weight: float = 1.0  # loss = L_K + over_weight * L_over
    eval_centroids: str = "refit"  # "refit" (k-means on clean images at epoch end) or "view1"
    # official quirks (see the module docstring)
    official_proportional_weights: bool = False
    official_no_grey: bool = False
    official_blur_sigma: bool = False
    official_kmeans_train_mode: bool = False
    official_dot_logits: bool = False

    legacy_keys: ClassVar[dict[str, str]] = {**LEGACY_INPUT_KEYS, "input_size": "view_size"}

    def __post_init__(self) -> None:
        if self.n_clusters < 2 or self.over_clusters < 0 or self.over_clusters == 1:
            raise ConfigError(f"PiCIEConfig: n_clusters must be >= 2 and over_clusters 0 or >= 2, got "
                              f"{self.n_clusters} / {self.over_clusters}")
        if self.eval_centroids not in ("refit", "view1"):
            raise ConfigError(f"PiCIEConfig.eval_centroids must be 'refit' or 'view1', got {self.eval_centroids!r}")
        if not 0 < self.min_scale <= 1:
            raise ConfigError(f"PiCIEConfig.min_scale must be in (0, 1], got {self.min_scale}")
        if self.view_size is not None and self.view_size < 32:
            raise ConfigError(f"PiCIEConfig.view_size must be >= 32 (ResNet stride), got {self.view_size}")
        self.input.check("PiCIEConfig", self.channels)
        if self.backbone_width < 8 or self.feature_dim < 2:
            raise ConfigError(f"PiCIEConfig: backbone_width must be >= 8 and feature_dim >= 2, got "
                              f"{self.backbone_width} / {self.feature_dim}")
        if self.pretrained_weights and self.backbone_width != 64:
            raise ConfigError("PiCIEConfig.pretrained_weights needs backbone_width 64 (ImageNet ResNet-18), got "
                              f"{self.backbone_width}")
        if self.kmeans_pixels_per_image is not None and self.kmeans_pixels_per_image < 1:
            raise ConfigError("PiCIEConfig.kmeans_pixels_per_image must be >= 1 or null")

    def view_settings(self) -> ViewSettings:
        names = {f.name for f in fields(ViewSettings)}
        return ViewSettings(**{n: getattr(self, n) for n in names})


@register_method("picie")
class PiCIE(Method):
    config_class = PiCIEConfig
    config: PiCIEConfig

    def __init__(self, config: PiCIEConfig):
        super().__init__(config)
        c = config
        self.net: ResNetFPN | DenseBackbone
        if c.backbone is not None:
            if not (c.backbone.fusion == "fpn" or c.backbone.trainable_trunk):
                raise ConfigError("PiCIEConfig.backbone: with a frozen trunk and 'concat' fusion nothing would train; "
                                  "use backbone.fusion: fpn (a trainable decoder) or backbone.train: finetune")
            self.net, self.adapter = build_backbone(c, "PiCIEConfig")
        else:
            self.adapter = c.input.adapter(c.channels, imagenet_normalisation(c.channels))
            self.net = ResNetFPN(in_channels=c.channels, out_dim=c.feature_dim, width=c.backbone_width)
        self.label_net = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.views = c.view_settings()
        dim = self.net.out_channels if c.backbone is not None else c.feature_dim
        for head, k in self._heads().items():
            suffix = _suffix(head)
            # Inference centroids (zeros until the first epoch ends), and each view's training classifier.
            self.register_buffer(f"centroids{suffix}", torch.zeros(k, dim))
            for v in (1, 2):
                self.register_buffer(f"centroids{v}{suffix}", torch.zeros(k, dim))
                self.register_buffer(f"class_weight{v}{suffix}", torch.full((k,), 1.0 / k))
        self.tables: ViewTables | None = None
        self._pretrained_loaded = False
        self._prepared_epoch = -1
        self._kmeans_losses: dict[str, float] = {}

    # -- helpers ---------------------------------------------------------------------------------------
    def _heads(self) -> dict[str, int]:
        heads = {"main": self.config.n_clusters}
        if self.config.over_clusters:
            heads["over"] = self.config.over_clusters
        return heads

    def _buffer(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    @property
    def _device(self) -> torch.device:
        return next(self.net.parameters()).device

    def train(self, mode: bool = True) -> PiCIE:
        super().train(mode)
        self.label_net.eval()  # pseudo-labels always come from eval-mode features (official compute_labels)
        return self

    def features(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> raw features (B, D, h, w) of ``net`` (``self.net`` or ``self.label_net``)."""
        return net(self.adapter(x))

    def make_views(self, images: torch.Tensor, index: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, EquivariantParams]:
        """The net inputs of view 1, G(P0(x)), and view 2, resize(P1(x)), and G's parameters (per index)."""
        if self.tables is None:
            raise TrainingError("PiCIE has no view tables: call on_epoch_start(ctx) before training steps")
        rows = self.tables.rows(index)
        geo = geometric_params(rows, self.views)
        size = net_input_size(images.shape[-2], images.shape[-1], self.config.view_size)
        view1 = equivariant_transform(photometric_view(images, rows[:, PHOTOMETRIC_COLUMNS[0]], self.views), geo,
                                      size)
        view2 = resize(photometric_view(images, rows[:, PHOTOMETRIC_COLUMNS[1]], self.views), size)
        return view1, view2, geo

    def view_features(self, net: nn.Module, view1: torch.Tensor, view2: torch.Tensor, geo: EquivariantParams
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned raw feature maps (B, D, h, w): f(view1) and G(f(view2)) (equivariance: G after the net)."""
        f1 = self.features(net, view1)  # (B, D, h, w)
        f2 = equivariant_transform(self.features(net, view2), geo, tuple(f1.shape[-2:]))  # (B, D, h, w)
        return f1, f2

    @torch.no_grad()
    def pseudo_labels(self, view1: torch.Tensor, view2: torch.Tensor, geo: EquivariantParams
                      ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Head -> nearest-centroid labels (B, h, w) of view 1 and view 2, from the frozen ``label_net``; float32
        even under AMP so that they equal the counting pass's labels."""
        with torch.autocast(device_type=view1.device.type, enabled=False):
            g1, g2 = self.view_features(self.label_net, view1.float(), view2.float(), geo)
            g1, g2 = normalize_features(g1), normalize_features(g2)
            return {head: (nearest_centroid_labels(g1, self._buffer(f"centroids1{_suffix(head)}")),
                           nearest_centroid_labels(g2, self._buffer(f"centroids2{_suffix(head)}")))
                    for head in self._heads()}

    def _check_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images, index = batch_images(batch, "PiCIE", self.config.channels), batch.get("index")
        if index is None:
            raise DataError(f"PiCIE batches need 'image' and 'index', got keys {sorted(batch)}")
        if min(images.shape[-2:]) < 32:
            raise TrainingError(f"PiCIE needs images of at least 32x32, got {tuple(images.shape[-2:])}")
        return images.to(self._device, torch.float32), index

    # -- training --------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], ctx: FitContext) -> dict[str, Any]:
        images, index = self._check_batch(batch)
        view1, view2, geo = self.make_views(images, index)
        f1, f2 = self.view_features(self.net, view1, view2, geo)
        logs: dict[str, Any] = {}
        total = torch.zeros((), device=f1.device)
        for head, (y1, y2) in self.pseudo_labels(view1, view2, geo).items():
            sfx = _suffix(head)
            c1, c2 = self._buffer(f"centroids1{sfx}"), self._buffer(f"centroids2{sfx}")
            w1 = self._buffer(f"class_weight1{sfx}") if self.config.balance else None
            w2 = self._buffer(f"class_weight2{sfx}") if self.config.balance else None
            out = picie_loss(f1, f2, y1, y2, c1, c2, w1, w2, mse=self.config.mse,
                             distance_bias=not self.config.official_dot_logits)
            total = total + (out["loss"] if head == "main" else self.config.over_weight * out["loss"])
            logs.update({f"{name}{sfx}": value.detach() for name, value in out.items() if name != "loss"})
            if sfx:
                logs["loss_over"] = out["loss"].detach()
        return {"loss": total, **logs}

    def load_pretrained(self) -> None:
        """Load ``config.pretrained_weights`` (ImageNet ResNet-18, torchvision layout) into the trunk.

        Called by :meth:`on_fit_start` once per run (``extra_state`` remembers it, so a resume keeps the trained
        weights), not at construction: a checkpoint rebuilt for export does not need the weights file."""
        if not self.config.pretrained_weights:
            raise ConfigError("PiCIEConfig.pretrained_weights is not set")
        load_imagenet_backbone(self.net, self.config.pretrained_weights)
        self.label_net.load_state_dict(self.net.state_dict())
        self._pretrained_loaded = True

    def on_fit_start(self, ctx: FitContext) -> None:
        if self.config.backbone is not None:
            self.prepare_backbones()  # its own flag in the state dict (weights_ready); label_net copies the net
            self.label_net.load_state_dict(self.net.state_dict())
        elif self.config.pretrained_weights and not self._pretrained_loaded:
            self.load_pretrained()

    def on_epoch_start(self, ctx: FitContext) -> None:
        if self._prepared_epoch == ctx.epoch and self.tables is not None:
            logger.info("PiCIE epoch %d already prepared (resumed inside it): keeping its centroids", ctx.epoch)
            return
        loader = _require_loader(ctx)
        n_images = _dataset_length(loader)
        self.tables = ViewTables(n_images, int(torch.randint(0, 2**62, (1,))))
        kmeans_seed = int(torch.randint(0, 2**62, (1,)))
        fitted = self._kmeans_pass(ctx, loader, kmeans_seed, clean=False)
        self.label_net.load_state_dict(self.net.state_dict())
        for name, centroids in fitted.items():
            self._buffer(name).copy_(centroids)
        if self.config.balance:
            self._fit_class_weights(ctx, loader)
        self._prepared_epoch = ctx.epoch
        ctx.log({f"kmeans_loss_{k}": v for k, v in self._kmeans_losses.items()})

    def on_epoch_end(self, ctx: FitContext) -> None:
        if self.config.eval_centroids == "view1":
            for sfx in [""] + (["_over"] if self.config.over_clusters else []):
                self._buffer(f"centroids{sfx}").copy_(self._buffer(f"centroids1{sfx}"))
            return
        fitted = self._kmeans_pass(ctx, _require_loader(ctx), int(torch.randint(0, 2**62, (1,))), clean=True)
        for name, centroids in fitted.items():
            self._buffer(name).copy_(centroids)
        ctx.log({f"kmeans_loss_{k}": v for k, v in self._kmeans_losses.items() if k.startswith("clean")})

    # -- per-epoch passes ------------------------------------------------------------------------------
    def _new_kmeans(self, k: int, gen: torch.Generator, ctx: FitContext) -> MiniBatchKMeans:
        c = self.config
        return MiniBatchKMeans(k, init_batches=c.kmeans_init_batches, batches_per_update=c.kmeans_batches_per_update,
                               init_iters=c.kmeans_init_iters, max_init_points=c.kmeans_max_init_points,
                               chunk_size=c.kmeans_chunk_size, generator=gen, all_reduce_sum=ctx.all_reduce_sum,
                               rank=ctx.rank)

    @torch.no_grad()
    def _kmeans_pass(self, ctx: FitContext, loader: Any, seed: int, clean: bool) -> dict[str, torch.Tensor]:
        """One pass of mini-batch k-means. ``clean``: un-augmented images (inference centroids, official view -1);
        else both training views. Returns buffer name -> centroids."""
        gen = torch.Generator().manual_seed(seed)
        targets = {}  # buffer name -> (view slot, k-means)
        for head, k in self._heads().items():
            sfx = _suffix(head)
            for v in ((0,) if clean else (1, 2)):
                targets[f"centroids{v or ''}{sfx}"] = (v, self._new_kmeans(k, gen, ctx))
        was_training = self.net.training
        self.net.train(self.config.official_kmeans_train_mode)
        try:
            for batch in loader:
                images, index = self._check_batch(batch)
                if clean:
                    size = net_input_size(images.shape[-2], images.shape[-1], self.config.view_size)
                    feats = {0: self.features(self.net, resize(images, size))}
                else:
                    f1, f2 = self.view_features(self.net, *self.make_views(images, index))
                    feats = {1: f1, 2: f2}
                for slot, km in targets.values():
                    km.add(self._sample_points(normalize_features(feats[slot]), gen))
        finally:
            self.net.train(was_training)
        try:
            fitted = {name: km.finish() for name, (_, km) in targets.items()}
        except ValueError as err:
            raise TrainingError(f"PiCIE k-means failed: {err} (use more images or a larger "
                                f"kmeans_pixels_per_image)") from err
        prefix = "clean" if clean else "view"
        for name, (slot, km) in targets.items():
            self._kmeans_losses[f"{prefix}{slot or ''}{'_over' if name.endswith('_over') else ''}"] = km.loss
        return {name: c.to(self._buffer(name).device) for name, c in fitted.items()}

    def _sample_points(self, feats_n: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(B, D, h, w) -> points (N, D): every pixel, or ``kmeans_pixels_per_image`` random ones per image."""
        b, d, h, w = feats_n.shape
        points = feats_n.permute(0, 2, 3, 1).reshape(b, h * w, d)
        n = self.config.kmeans_pixels_per_image
        if n is not None and n < h * w:
            keep = torch.rand(b, h * w, generator=gen).argsort(dim=1)[:, :n].to(points.device)  # (B, n)
            points = points.gather(1, keep.unsqueeze(-1).expand(-1, -1, d))
        return points.reshape(-1, d)

    @torch.no_grad()
    def _fit_class_weights(self, ctx: FitContext, loader: Any) -> None:
        """Count every pixel's pseudo-label per view (the official compute_labels pass) -> CE class weights."""
        counts = {name: torch.zeros(k, dtype=torch.float64, device=self._device)
                  for head, k in self._heads().items() for name in _view_names(head)}
        for batch in loader:
            images, index = self._check_batch(batch)
            view1, view2, geo = self.make_views(images, index)
            for head, labels in self.pseudo_labels(view1, view2, geo).items():
                for name, y in zip(_view_names(head), labels, strict=True):
                    counts[name] += torch.bincount(y.flatten(), minlength=self._heads()[head]).to(torch.float64)
        for name, cnt in counts.items():
            weight = class_weights(ctx.all_reduce_sum(cnt), proportional=self.config.official_proportional_weights)
            self._buffer(name).copy_(weight)

    # -- state -----------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        tables = self.tables
        return {"pretrained_loaded": self._pretrained_loaded, "prepared_epoch": self._prepared_epoch,
                "table_seed": None if tables is None else tables.seed,
                "n_images": None if tables is None else tables.n_images, "kmeans_losses": dict(self._kmeans_losses)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._pretrained_loaded = bool(state.get("pretrained_loaded", False))
        self._prepared_epoch = int(state.get("prepared_epoch", -1))
        self._kmeans_losses = dict(state.get("kmeans_losses", {}))
        seed, n = state.get("table_seed"), state.get("n_images")
        self.tables = None if seed is None or n is None else ViewTables(int(n), int(seed))

    # -- inference -------------------------------------------------------------------------------------
    def eval_heads(self) -> dict[str, int]:
        return self._heads()

    def inference_net(self, head: str = "main") -> nn.Module:
        if head not in self._heads():
            raise ConfigError(f"PiCIE has heads {sorted(self._heads())}, not {head!r}")
        centroids = self._buffer("centroids" if head == "main" else "centroids_over")
        classifier = CentroidClassifier(centroids, distance_bias=not self.config.official_dot_logits)
        return PiCIEInferenceNet(self.adapter, self.net, classifier)

    def input_spec(self) -> InputSpec:
        c = self.config
        native = c.input.native_size or c.view_size  # the frame size the net was trained at, when one is known
        if c.backbone is not None:
            stride, default = self.net.stride, backbone_normalisation(c)
        else:
            stride, default = 32, imagenet_normalisation(c.channels)
        spec = c.input.spec(c.channels, stride=stride, min_size=stride, default=default)
        return spec.model_copy(update={"native_size": (native, native) if native else None})


def _suffix(head: str) -> str:
    """Buffer-name suffix of a head: "" for the main clustering, "_over" for PiCIE+H's over-clustering."""
    return "" if head == "main" else "_over"


def _view_names(head: str) -> tuple[str, str]:
    return f"class_weight1{_suffix(head)}", f"class_weight2{_suffix(head)}"


def _require_loader(ctx: FitContext) -> Any:
    if ctx.train_loader is None:
        raise TrainingError("PiCIE's epoch hooks run k-means over ctx.train_loader, which is None")
    return ctx.train_loader


def _dataset_length(loader: Any) -> int:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError) as err:
        raise TrainingError("PiCIE needs a map-style train dataset with a length (its per-index view tables); "
                            f"ctx.train_loader.dataset has none ({err})") from err
