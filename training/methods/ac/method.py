"""Autoregressive Clustering, AC (Ouali, Hudelot, Tami, ECCV 2020, "Autoregressive Unsupervised Image
Segmentation", arXiv 2007.08247).

The two views of an image are the outputs of one network under two different pixel orderings, made with masked
convolutions (footnote 2's Shift) and masked attention; training maximises the mutual information between the
two per-pixel cluster distributions. At inference no mask is applied ("fall back to the standard convolution").
There is no official code; the reference is docs/METHODS.md §3, whose proposals [P] are
the defaults here and each a field of :class:`ACConfig` (its section and choices-table row in brackets):

* Objective (§3.2, §A1/§A2/§A12): IIC's uncollapsed segmentation MI (``training.losses.mutual_info.iic_seg_loss``,
  uncollapsed, identity alignment, all-ones mask) between Φ(x; o1) and Φ(x; o2) at input resolution, ``lamb``
  = 1, displacement window ``half_T`` (10 for COCO and Potsdam-3, 5 for Potsdam-6).
* Orderings (§3.3, §A5): (o1, o2) uniform over the ordered pairs with o1 != o2 from ``orderings`` (default: the
  8 raster scans, all 16 with ``attention``; ids in ``training.methods.ac.orderings``). The reimplementation allows
  o1 = o2, which leaves no invariance signal.
* Net (§3.4-§3.6, §A3/§A4/§A6/§A7): ``training.methods.ac.autoregressive.AutoregressiveSegNet``; ``mode = "strict"``
  (first masked layer type A, then type B; ``"inclusive"`` = type B everywhere), ``attention = True`` after block 2
  (grid stride 4; stride 2 without attention), widths 64 -> 1024 (``width``, ``n_blocks``). ``head_norm`` (BN -> ReLU
  before the heads, default on) is ours, not a proposal: without it the un-normalised residual stream saturates the
  initial softmaxes (see ``training.methods.ac.autoregressive``).
* Views (§3.7, §A8): both orderings see the same x, h-flipped with ``hflip_p`` before both views (IIC's
  preprocessing; the random crop is the dataset's). ``iic_transforms = True`` also gives view 2 IIC's colour
  jitter (``jitter``, ``training.data.photometric``) and horizontal flip (``view_flip_p``; plus IIC's random
  affine with ``iic_affine``) from ``training.data.geometric.paired_view``, undone on Φ(x2; o2) before the loss
  by ``iic_seg_loss_with_affine``, exactly as IIC's method pairs its views.
* Over-clustering (§3.2, §A9): an auxiliary head ``"over"`` of ``over_clusters`` clusters (0 = none) with the same
  loss (``lamb_over``). ``head_schedule`` as IIC's method: ``"epoch"`` (default) alternates the trained head per
  engine epoch, auxiliary first unless ``over_first = False`` (IIC runs both heads in one of its epochs, so two
  engine epochs are one of IIC's); ``"step"`` alternates per optimiser step; ``"both"`` sums both heads' losses
  every step. The idle head has ``requires_grad=False`` for the step (Adam skips it), as in IIC's method.
* GT mask (shared protocol, §S2): off. ``iic_train_mask = True`` keeps only pixels with ``label != 255`` in the
  loss, to compare with IIC's COCO protocol.
* Inference (§3.6, §A11): Φ(x; 0), plain convolutions and unmasked attention, BN running statistics as trained
  (gathered under masked passes). :meth:`AC.recalibrate_batchnorm` is the secondary, label-free variant.

Masked weights: taps hidden under this step's orderings get exact zero gradients (``after_backward``), and taps
hidden under every allowed ordering stay bit-identical to their initial values through Adam's momentum and
weight decay (``on_step_end`` writes them back); see ``training.methods.ac.masked_conv``. Both hooks must run in any
loop that trains this method (the engine calls them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.data.geometric import AffineRange, paired_view
from training.data.photometric import PhotometricConfig, photometric_augment
from training.errors import ConfigError, DataError
from training.losses.mutual_info import iic_seg_loss, iic_seg_loss_with_affine
from training.methods.ac.autoregressive import AutoregressiveSegNet
from training.methods.ac.masked_conv import MaskedConv2d
from training.methods.ac.orderings import ALL_IDS, RASTER_IDS, ZIGZAG_IDS, sample_ordering_pair, use_ordering
from training.methods.base import FitContext, Method, MethodConfig, batch_images, batch_labels, register_method
from training.nets.backbones import backbone_normalisation, build_backbone
from training.nets.input_adapter import InputAdapter
from usseg_sdk.meta import InputSpec

logger = logging.getLogger(__name__)

_IGNORE = 255


@dataclass
class ACConfig(MethodConfig):
    """AC's options; the module docstring gives the reason behind each default."""

    over_clusters: int = 0  # auxiliary over-clustering head K_over; 0 = main head only
    # net
    width: int = 64  # h and the first masked layer; AR block i has width * 2**i channels
    n_blocks: int = 4
    attention: bool = True
    attention_after: int = 2  # AR block after which the attention block sits
    attention_heads: int = 1
    head_norm: bool = True  # BN -> ReLU before the 1x1 heads (ours; False = docs/METHODS.md §3.6 literally)
    grid_stride: int | None = None  # 2 or 4; None = 4 with attention, 2 without
    mode: str = "strict"  # "strict" (type A first, then B) or "inclusive" (type B everywhere)
    orderings: tuple[int, ...] | None = None  # allowed ids; None = 1-8, plus 9-16 with attention
    # objective
    lamb: float = 1.0
    lamb_over: float = 1.0
    half_T: int = 10  # displacement window (input pixels)
    head_schedule: str = "epoch"  # "epoch" | "step" | "both" (see the module docstring)
    over_first: bool = True  # IIC: auxiliary head first in each pair of epochs (or steps)
    iic_train_mask: bool = False
    # views
    hflip_p: float = 0.5  # h-flip of x before both views
    iic_transforms: bool = False
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.125)  # brightness, contrast, saturation, hue
    view_flip_p: float = 0.5  # h-flip of view 2 with iic_transforms
    iic_affine: bool = False  # with iic_transforms: IIC's random affine of view 2 (off in every IIC paper run)

    def __post_init__(self) -> None:
        self._check_net()
        self._check_objective()
        self._check_input()

    def _check_net(self) -> None:
        for name in ("width", "n_blocks", "attention_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ACConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.attention and not 1 <= self.attention_after <= self.n_blocks:
            raise ConfigError(f"ACConfig.attention_after must be in 1..n_blocks={self.n_blocks}, "
                              f"got {self.attention_after}")
        key_channels = self.width * 2 ** self.attention_after // 2  # d_k = d_v = C/2 at the attention block
        if self.attention and key_channels % self.attention_heads:
            raise ConfigError(f"ACConfig.attention_heads={self.attention_heads} must divide the attention's "
                              f"{key_channels} key channels (width * 2**attention_after / 2)")
        if self.grid_stride not in (None, 2, 4):
            raise ConfigError(f"ACConfig.grid_stride must be 2, 4 or null, got {self.grid_stride}")
        if self.mode not in ("strict", "inclusive"):
            raise ConfigError(f"ACConfig.mode must be 'strict' or 'inclusive', got {self.mode!r}")
        ids = self.ordering_ids
        if len(ids) < 2 or len(set(ids)) != len(ids) or not set(ids) <= set(ALL_IDS):
            raise ConfigError(f"ACConfig.orderings needs at least two distinct ids in 1..16, got {ids}")
        if not self.attention and set(ids) & set(ZIGZAG_IDS):
            raise ConfigError(f"ACConfig.orderings: zigzag ids 9-16 need attention=True, got {ids}")

    def _check_objective(self) -> None:
        if self.n_clusters < 2 or self.over_clusters < 0 or self.over_clusters == 1:
            raise ConfigError(f"ACConfig: n_clusters must be >= 2 and over_clusters 0 or >= 2, got "
                              f"{self.n_clusters} / {self.over_clusters}")
        if self.head_schedule not in ("epoch", "step", "both"):
            raise ConfigError(f"ACConfig.head_schedule must be 'epoch', 'step' or 'both', got {self.head_schedule!r}")
        if self.half_T < 0:
            raise ConfigError(f"ACConfig.half_T must be >= 0, got {self.half_T}")
        for name in ("hflip_p", "view_flip_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"ACConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.jitter) != 4 or min(self.jitter) < 0:
            raise ConfigError(f"ACConfig.jitter needs 4 non-negative strengths, got {self.jitter}")

    def _check_input(self) -> None:
        self.input.check("ACConfig", self.channels)

    @property
    def ordering_ids(self) -> tuple[int, ...]:
        if self.orderings is not None:
            return tuple(self.orderings)
        return ALL_IDS if self.attention else RASTER_IDS

    @property
    def stride(self) -> int:
        """The grid's stride: a backbone's 4, else ``grid_stride`` (4 with attention, 2 without)."""
        if self.backbone is not None:
            return 4
        return self.grid_stride or (4 if self.attention else 2)



class ACInferenceNet(nn.Module):
    """Φ(x; 0) of one head: (B, C, H, W) in [0, 1] -> cluster probabilities (B, K, H, W). Shares the weights."""

    def __init__(self, adapter: InputAdapter, net: AutoregressiveSegNet, head: str):
        super().__init__()
        self.adapter, self.net, self.head = adapter, net, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapter(x), self.head)


@register_method("ac")
class AC(Method):
    """AC: MI between the cluster maps of one image under two different orderings."""

    config_class = ACConfig
    config: ACConfig

    def __init__(self, config: ACConfig):
        super().__init__(config)
        c = config
        backbone = None
        if c.backbone is not None:
            backbone, self.adapter = build_backbone(c, "ACConfig")
        else:
            self.adapter = c.input.adapter(c.channels)
        heads = {"main": c.n_clusters} | ({"over": c.over_clusters} if c.over_clusters else {})
        self.net = AutoregressiveSegNet(self.adapter.out_channels, heads, width=c.width, n_blocks=c.n_blocks,
                                        grid_stride=c.stride, attention=c.attention,
                                        attention_after=c.attention_after, attention_heads=c.attention_heads,
                                        mode=c.mode, head_norm=c.head_norm, backbone=backbone)
        for conv in self.masked_convs():
            conv.freeze_never_visible(c.ordering_ids)
        self._jitter = PhotometricConfig(*c.jitter)
        self._affine = AffineRange() if c.iic_affine else None
        self._last_heads: tuple[str, ...] = ()
        self._used_orderings: set[int] = set()  # orderings since the last optimiser step

    def masked_convs(self) -> list[MaskedConv2d]:
        return [m for m in self.modules() if isinstance(m, MaskedConv2d)]

    # -- training ------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], ctx: FitContext) -> dict[str, Any]:
        images = self._check_images(batch)  # (B, C, H, W)
        labels = batch_labels(batch, images, "AC") if self.config.iic_train_mask else None
        heads = self.active_heads(ctx)
        for name, head in self.net.heads.items():
            head.requires_grad_(name in heads)
        images, labels = _hflip_where(images, labels, self._draw(images.shape[0], self.config.hflip_p))
        view2, affine2_to_1 = images, None
        if self.config.iic_transforms:
            with torch.no_grad():
                view2 = photometric_augment(images, self._jitter)
                view2, affine2_to_1 = paired_view(view2, flip_p=self.config.view_flip_p, affine=self._affine)
        o1, o2 = sample_ordering_pair(self.config.ordering_ids)
        self._used_orderings.update((o1, o2))
        y1 = self._forward(images, o1, heads)  # head -> (B, K, H, W) softmax; train-mode BN in both passes
        y2 = self._forward(view2, o2, heads)
        mask = None if labels is None else (labels != _IGNORE).float()  # (B, H, W)
        logs: dict[str, Any] = {"ordering_1": float(o1), "ordering_2": float(o2), "head_over": float("over" in heads)}
        total = images.new_zeros((), dtype=torch.float32)
        for head in heads:
            loss, loss_no_lamb = self._loss(head, y1[head], y2[head], affine2_to_1, mask, ctx)
            total = total + loss
            logs[f"loss_{head}"] = float(loss.detach())
            logs[f"loss_no_lamb_{head}"] = float(loss_no_lamb.detach())
        self._last_heads = heads
        return {"loss": total, **logs}

    def active_heads(self, ctx: FitContext) -> tuple[str, ...]:
        """The head(s) trained in this step, a function of ``ctx.epoch`` / ``ctx.step`` (so resumes repeat it)."""
        if not self.config.over_clusters:
            return ("main",)
        if self.config.head_schedule == "both":
            return ("over", "main")
        order = ("over", "main") if self.config.over_first else ("main", "over")
        counter = ctx.epoch if self.config.head_schedule == "epoch" else ctx.step
        return (order[counter % 2],)

    def _forward(self, images: torch.Tensor, ordering: int, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        with use_ordering(self.net, ordering):
            return self.net.forward_heads(self.adapter(images), heads)

    def _loss(self, head: str, y1: torch.Tensor, y2: torch.Tensor, affine2_to_1: torch.Tensor | None,
              mask: torch.Tensor | None, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        """IIC's uncollapsed loss. Without ``iic_transforms`` the alignment is the identity (both maps are of the
        same image); with it, view 2's output is un-warped by ``affine2_to_1`` first. No mask (all ones) unless
        ``iic_train_mask``. The joints are summed over ranks before normalising; float32 outside autocast."""
        lamb = self.config.lamb if head == "main" else self.config.lamb_over
        kwargs = {"lamb": lamb, "half_T": self.config.half_T, "mask": mask, "uncollapsed": True,
                  "reduce": ctx.all_reduce_sum}
        with torch.autocast(device_type=y1.device.type, enabled=False):
            if affine2_to_1 is None:
                return iic_seg_loss(y1.float(), y2.float(), **kwargs)
            return iic_seg_loss_with_affine(y1.float(), y2.float(), affine2_to_1.float(), **kwargs)

    @staticmethod
    def _draw(n: int, p: float) -> torch.Tensor:
        return torch.rand(n) < p  # (B,) from the global CPU RNG, so resumed runs repeat on any device

    def _check_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images = batch_images(batch, "AC", self.config.channels)
        if 2 * self.config.half_T + 1 > min(images.shape[2:]):
            raise DataError(f"batch['image'] of size {tuple(images.shape[2:])} is smaller than the displacement "
                            f"window 2*half_T+1 = {2 * self.config.half_T + 1}")
        return images

    # -- hooks ---------------------------------------------------------------------------------------
    def configure_optimizer(self) -> torch.optim.Optimizer:
        # every parameter, including a head idle (requires_grad=False) when this is called
        return torch.optim.Adam(self.param_groups(self.parameters_but_frozen_trunks()), lr=self.config.lr,
                                weight_decay=self.config.weight_decay)

    def on_epoch_start(self, ctx: FitContext) -> None:
        if self.config.over_clusters and self.config.head_schedule == "epoch":
            logger.info("AC epoch %d trains head %s", ctx.epoch, self.active_heads(ctx)[0])

    def after_backward(self, ctx: FitContext) -> None:
        """Zero the gradient of taps hidden under every ordering used since the last optimiser step."""
        if self._used_orderings:
            for conv in self.masked_convs():
                conv.mask_grad_(self._used_orderings)

    def on_step_end(self, ctx: FitContext) -> None:
        """Write back the taps no allowed ordering shows (moved only by momentum / weight decay)."""
        for conv in self.masked_convs():
            conv.restore_frozen_()
        self._used_orderings.clear()

    def extra_state(self) -> dict[str, Any]:
        """The heads of the last step, for inspection; the schedule itself follows ``ctx`` (see active_heads)."""
        return {"last_heads": list(self._last_heads)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        heads = tuple(state.get("last_heads", ()))
        unknown = sorted(set(heads) - set(self.eval_heads()))
        if unknown:
            raise ConfigError(f"AC extra state names head(s) {unknown}; this config has {sorted(self.eval_heads())}")
        self._last_heads = heads

    @torch.no_grad()
    def recalibrate_batchnorm(self, batches: Iterable[dict[str, torch.Tensor]], max_batches: int = 200) -> int:
        """Label-free BN recalibration on unmasked passes (docs/METHODS.md §3.6 / §A11, secondary variant).

        Resets every BN's running statistics and re-estimates them as the plain average over up to
        ``max_batches`` batches of Φ(x; 0) in train mode, without gradients or labels. The running statistics
        of training were gathered under masked activations; this variant gives the plain network its own.
        Returns the number of batches used. Call it before evaluation/export of the recalibrated variant.
        """
        bns = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [bn.momentum for bn in bns]
        was_training = self.training
        device = next(self.parameters()).device
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: every batch weighs the same
        self.train()
        used = 0
        try:
            for batch in batches:
                if used >= max_batches:
                    break
                images = self._check_images(batch).to(device)
                self.net.grid_logits(self.net.stem(self.adapter(images)))
                used += 1
        finally:
            for bn, momentum in zip(bns, momenta, strict=True):
                bn.momentum = momentum
            self.train(was_training)
        if used == 0:
            raise DataError("recalibrate_batchnorm got no batches")
        logger.info("recalibrated %d BatchNorm layers on %d unmasked batches", len(bns), used)
        return used

    # -- inference -----------------------------------------------------------------------------------
    def input_spec(self) -> InputSpec:
        """Stride = grid stride (2 or 4): h's output grid then tiles the frame exactly. min_size: one cell."""
        c = self.config
        if c.backbone is not None:  # the grid is the backbone's stride-4 map; frames pad to its deepest stride
            stride = self.backbones()[0].stride
            return c.input.spec(c.channels, stride=stride, min_size=stride, default=backbone_normalisation(c),
                                normalized_in_graph=True)
        return c.input.spec(c.channels, stride=c.stride, min_size=c.stride, normalized_in_graph=True)

    def eval_heads(self) -> dict[str, int]:
        heads = {"main": self.config.n_clusters}
        if self.config.over_clusters:
            heads["over"] = self.config.over_clusters
        return heads

    def inference_net(self, head: str = "main") -> ACInferenceNet:
        """Φ(x; 0): plain convolutions, unmasked attention, sharing the method's weights.

        It is returned in whatever mode the method is in; :meth:`predict` and export put it in eval mode (BN
        running statistics). Export's rewrite (``training.methods.ac.orderings.rewrite_to_plain``) turns the masked
        layers into ``nn.Conv2d`` / :class:`~training.methods.ac.masked_attention.SelfAttention2d`.
        """
        if head not in self.eval_heads():
            raise ConfigError(f"AC has heads {sorted(self.eval_heads())}; got {head!r}")
        return ACInferenceNet(self.adapter, self.net, head)


def _hflip_where(images: torch.Tensor, labels: torch.Tensor | None, flip: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Horizontally flip the samples where ``flip`` (B,) is True; a flip is its own inverse."""
    flip = flip.to(images.device)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if labels is not None:
        labels = torch.where(flip[:, None, None], labels.flip(-1), labels)
    return images, labels
