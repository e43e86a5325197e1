"""IIC — Invariant Information Clustering for unsupervised segmentation (Ji, Henriques, Vedaldi, ICCV 2019).

Maximises the mutual information between the per-pixel cluster distributions of an image and of a
photometrically and geometrically transformed copy, over a window of small displacements (paper Eq. (5);
:mod:`training.losses.mutual_info`). Network: SegmentationNet10aTwoHead (:mod:`training.nets.net10a`), head A
over-clusters (k_A), head B has the evaluated number of clusters (k_B). Official code (MIT): github.com/xu-ji/IIC,
``code/scripts/segmentation/segmentation_twohead.py`` and ``code/datasets/segmentation/cocostuff.py``
(docs/METHODS.md §2).

One training step (official pair construction, batched on the device):
    view 1 = the batch; view 2 = colour jitter, optional random affine, horizontal flip (p = ``flip_p``) of it;
    both go through the net separately (separate BatchNorm statistics, as the official script); view 2's output
    is un-warped with ``affine2_to_1``; the loss is averaged over sub-heads.

Head alternation (``head_schedule``). The official script trains, every epoch, one full pass with head A's loss
and then one full pass with head B's loss over the same data (``--head_B_first`` swaps them).
    * ``"epoch"`` (default, faithful): each engine epoch is one such pass; engine epoch e trains head
      ``order[e % 2]``. One official epoch is therefore two engine epochs.
    * ``"step"``: the head alternates every optimiser step (``order[step % 2]``): both heads see every epoch.
    * ``"both"``: every step trains both heads on the sum of their losses (one trunk pass per view).
  The head that does not train in a step has ``requires_grad=False`` for that step, so "every trainable
  parameter gets a gradient" holds and Adam skips it. Departure: the official torch-0.4 ``zero_grad()`` left zero
  (not None) gradients on the idle head, so Adam kept moving it by its decaying momentum; we do not. Under DDP
  this needs ``find_unused_parameters=True``.

Other choices where the paper is silent or departs from the code:
    * ``skip_empty_shifts=True`` by default: displacements with no unmasked overlap are dropped instead of
      making the loss NaN (the official behaviour, which parity tests keep as the loss function's default).
    * ``use_label_mask=False`` by default: the official COCO training mask is derived from ground-truth labels
      (stuff pixels only, docs/METHODS.md §I4); with True, pixels whose ``batch["label"]`` is 255 leave the loss.
    * Inference uses sub-head ``inference_sub_head`` (0) of the chosen head; the paper picks the sub-head with
      the best accuracy on the labelled assignment set, which an evaluator can set with
      :meth:`IIC.select_sub_head` (kept in ``extra_state``).
    * Normalisation: IIC only divides by 255 (mean 0, std 1, the default); ``input.mean``/``input.std`` set a
      per-channel normalisation inside the net (the NEU-Seg preset uses its grey statistics). Sobel is computed on the
      un-normalised grey image (:class:`~training.nets.input_adapter.InputAdapter`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from training.data.geometric import AffineRange, paired_view
from training.data.photometric import PhotometricConfig, photometric_augment
from training.errors import ConfigError
from training.losses.mutual_info import JOINT_IMPLS, iic_seg_loss_with_affine
from training.methods.base import FitContext, Method, MethodConfig, batch_images, register_method
from training.nets.backbones import backbone_normalisation, build_backbone
from training.nets.input_adapter import LEGACY_INPUT_KEYS, InputConfig
from training.nets.net10a import (
    STRIDE,
    BackboneTwoHead,
    Net10aInferenceNet,
    SegmentationNet10aTwoHead,
    min_input_size,
)
from usseg_sdk.meta import InputSpec

logger = logging.getLogger(__name__)

_HEAD_OF = {"main": "B", "over": "A"}


@dataclass
class IICConfig(MethodConfig):
    """IIC's hyper-parameters. Official names in brackets; defaults are the script's where it has one."""

    n_clusters: int = 4  # head B's k [gt_k]
    over_clusters: int = 20  # head A's k [output_k_A]
    channels: int = 1  # input channels: 1 grey, 3 RGB, 4 RGBIR
    lr: float = 1e-4
    num_sub_heads: int = 1  # [num_sub_heads]
    lamb_A: float = 1.0  # λ of head A's loss [lamb_A]
    lamb_B: float = 1.0  # λ of head B's loss [lamb_B] (1.5 on the *-3 paper runs)
    half_T: int = 10  # displacement window half side [half_T_side_dense]
    uncollapsed: bool = True  # [use_uncollapsed_loss], on in every paper run
    skip_empty_shifts: bool = True  # False reproduces the official NaN on displacements without overlap
    # normalisation (None: 0 / 1, IIC only divides by 255), Sobel [no_sobel: "append" = image + dx, dy], native size
    input: InputConfig = field(default_factory=lambda: InputConfig(sobel="append"))
    jitter_brightness: float = 0.4  # [jitter_brightness] (Potsdam runs: 0.1 each)
    jitter_contrast: float = 0.4
    jitter_saturation: float = 0.4
    jitter_hue: float = 0.125
    flip_p: float = 0.5  # probability of flipping view 2 [flip_p; the official flips when rand() > flip_p]
    use_random_affine: bool = False  # [use_random_affine], off in every paper run
    affine_rot: tuple[float, float] = (-30.0, 30.0)  # degrees [aff_min_rot, aff_max_rot]
    affine_shear: tuple[float, float] = (-10.0, 10.0)  # degrees
    affine_scale: tuple[float, float] = (0.8, 1.2)
    align_corners: bool = False  # grid semantics of the affine un-warp (True = torch 0.4.1)
    width: float = 1.0  # trunk width multiplier (not in the paper; CPU presets)
    batchnorm_track: bool = True  # [batchnorm_track]
    head_B_first: bool = False  # [head_B_first]
    head_schedule: str = "epoch"  # "epoch" | "step" | "both" (see the module docstring)
    use_label_mask: bool = False  # exclude label == 255 pixels from the loss (the official COCO stuff mask)
    joint: str = "fft"  # displaced-joint implementation: "fft" | "conv" | "loop"
    inference_sub_head: int = 0  # sub-head used by inference_net unless select_sub_head() chose another
    # Net10a's 1x1 head pads by 1 (official, docs/METHODS.md §I6): a ring of uniform probabilities around the map,
    # which the argmax turns into cluster 0 along every frame border. 0 (with a bias): no ring (a line's choice).
    head_padding: int = 1
    # Where the dense MI loss is computed: "input" (probabilities upsampled to the crop, as the paper's stride-2
    # net) or "features" (the backbone's stride-4 grid, no upsampling: 16x fewer positions; half_T then counts
    # grid cells). Only with a backbone (docs/METHODS.md §7.4).
    loss_grid: str = "input"

    legacy_keys: ClassVar[dict[str, str]] = {**LEGACY_INPUT_KEYS, "input_size": "input.native_size"}


@register_method("iic")
class IIC(Method):
    """IIC with SegmentationNet10aTwoHead. Heads: ``"main"`` = head B (k_B), ``"over"`` = head A (k_A)."""

    config_class = IICConfig
    config: IICConfig

    def __init__(self, config: IICConfig):
        super().__init__(config)
        _validate(config)
        c = config
        self.net: SegmentationNet10aTwoHead | BackboneTwoHead
        if c.backbone is not None:
            trunk, self.adapter = build_backbone(c, "IICConfig")
            self.net = BackboneTwoHead(trunk, k_A=c.over_clusters, k_B=c.n_clusters, num_sub_heads=c.num_sub_heads)
        else:
            self.adapter = c.input.adapter(c.channels)
            self.net = SegmentationNet10aTwoHead(self.adapter.out_channels, k_A=c.over_clusters, k_B=c.n_clusters,
                                                 num_sub_heads=c.num_sub_heads, width=c.width,
                                                 track_running_stats=c.batchnorm_track, head_padding=c.head_padding)
        self._jitter = PhotometricConfig(brightness=c.jitter_brightness, contrast=c.jitter_contrast,
                                         saturation=c.jitter_saturation, hue=c.jitter_hue)
        self._affine = AffineRange(c.affine_rot, c.affine_shear, c.affine_scale) if c.use_random_affine else None
        self._steps_per_head = {"A": 0, "B": 0}
        self._sub_head = {"main": c.inference_sub_head, "over": c.inference_sub_head}

    # -- training ------------------------------------------------------------------------------------------
    def active_heads(self, ctx: FitContext) -> tuple[str, ...]:
        """The head(s) trained in this step: ("A",), ("B",) or ("A", "B")."""
        if self.config.head_schedule == "both":
            return ("A", "B")
        order = ("B", "A") if self.config.head_B_first else ("A", "B")
        counter = ctx.epoch if self.config.head_schedule == "epoch" else ctx.step
        return (order[counter % 2],)

    def training_step(self, batch: dict[str, torch.Tensor], ctx: FitContext) -> dict[str, Any]:
        x = self._check_images(batch)  # (B, C, H, W) in [0, 1]
        heads = self.active_heads(ctx)
        self._freeze_idle_heads(heads)
        with torch.no_grad():
            x2 = photometric_augment(x, self._jitter)
            x2, affine2_to_1 = paired_view(x2, flip_p=self.config.flip_p, affine=self._affine,
                                           align_corners=self.config.align_corners)  # (B, C, H, W), (B, 2, 3)
        mask = self._loss_mask(batch, x)
        f1 = self.net.trunk(self.adapter(x))  # (B, C', H/2-4, W/2-4); two passes: separate BN statistics
        f2 = self.net.trunk(self.adapter(x2))
        size = (x.shape[-2], x.shape[-1]) if self.config.loss_grid == "input" else (f1.shape[-2], f1.shape[-1])
        logs: dict[str, Any] = {}
        total = x.new_zeros(())
        for head in heads:
            loss, no_lamb, skipped = self._head_loss(head, f1, f2, size, affine2_to_1, mask, ctx)
            total = total + loss
            logs[f"loss_{head}"] = float(loss.detach())
            logs[f"loss_no_lamb_{head}"] = float(no_lamb)
            logs["skipped_shifts"] = logs.get("skipped_shifts", 0.0) + skipped
            self._steps_per_head[head] += 1
        logs["head_B"] = float(heads == ("B",))
        return {"loss": total, **logs}

    def _head_loss(self, head: str, f1: torch.Tensor, f2: torch.Tensor, size: tuple[int, int],
                   affine2_to_1: torch.Tensor, mask: torch.Tensor | None,
                   ctx: FitContext) -> tuple[torch.Tensor, float, float]:
        """Mean over sub-heads of the MI loss of one head; returns (loss, loss_no_lamb, skipped shifts)."""
        c = self.config
        outs1 = self.net.head(head)(f1, size)  # sub-heads x (B, K, H, W)
        outs2 = self.net.head(head)(f2, size)
        lamb = c.lamb_A if head == "A" else c.lamb_B
        losses, no_lambs, skipped = [], [], 0.0
        with torch.autocast(device_type=f1.device.type, enabled=False):  # MI of clamped logs: float32 at least
            for p1, p2 in zip(outs1, outs2, strict=True):
                stats: dict[str, Any] = {}
                loss, no_lamb = iic_seg_loss_with_affine(
                    p1.float(), p2.float(), affine2_to_1.float(), mask=mask, lamb=lamb, half_T=c.half_T,
                    uncollapsed=c.uncollapsed, align_corners=c.align_corners, skip_empty_shifts=c.skip_empty_shifts,
                    reduce=ctx.all_reduce_sum, joint=c.joint, stats=stats)  # type: ignore[arg-type]
                losses.append(loss)
                no_lambs.append(float(no_lamb.detach()))
                skipped += stats.get("skipped_shifts", 0)
        return torch.stack(losses).mean(), sum(no_lambs) / len(no_lambs), skipped / len(losses)

    def _freeze_idle_heads(self, heads: tuple[str, ...]) -> None:
        for name in ("A", "B"):
            self.net.head(name).requires_grad_(name in heads)

    def _loss_mask(self, batch: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor | None:
        if not self.config.use_label_mask:
            return None
        if "label" not in batch:
            raise ConfigError("IICConfig.use_label_mask is set but the batch has no 'label' (use a labelled dataset)")
        label = batch["label"]
        if label.shape != (x.shape[0], x.shape[2], x.shape[3]):
            raise ConfigError(f"batch['label'] must be (B, H, W) = {(x.shape[0], *x.shape[2:])}, got "
                              f"{tuple(label.shape)}")
        return (label != 255).to(torch.float32)  # (B, H, W), image-1 coordinates

    def _check_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch_images(batch, "IIC", self.config.channels)
        stride = self.input_spec().stride
        if self.config.backbone is not None and (x.shape[-2] % stride or x.shape[-1] % stride):
            raise ConfigError(f"IIC on {self.config.backbone.name} needs crops whose sides are multiples of {stride}, "
                              f"got {tuple(x.shape[-2:])} (data.train.crop)")
        if min(x.shape[-2:]) < min_input_size():
            raise ConfigError(f"IIC's Net10a needs crops of at least {min_input_size()} pixels, got "
                              f"{tuple(x.shape[-2:])}")
        return x

    def configure_optimizer(self) -> torch.optim.Optimizer:
        # every parameter, including the head that is idle (requires_grad=False) at the time of the call
        return torch.optim.Adam(self.param_groups(self.parameters_but_frozen_trunks()), lr=self.config.lr,
                                weight_decay=self.config.weight_decay)

    def on_epoch_start(self, ctx: FitContext) -> None:
        if self.config.head_schedule == "epoch":
            logger.info("IIC epoch %d trains head %s", ctx.epoch, self.active_heads(ctx)[0])

    # -- state -------------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"steps_per_head": dict(self._steps_per_head), "sub_head": dict(self._sub_head)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._steps_per_head.update({k: int(v) for k, v in state.get("steps_per_head", {}).items()})
        for head, index in state.get("sub_head", {}).items():
            self.select_sub_head(head, int(index))

    # -- inference ------------------------------------------------------------------------------------------
    def select_sub_head(self, head: str, index: int) -> None:
        """Make ``inference_net(head)`` use sub-head ``index`` (e.g. the best one on the assignment set)."""
        self._head_module(head)
        if not 0 <= index < self.config.num_sub_heads:
            raise ConfigError(f"sub-head {index} does not exist; num_sub_heads is {self.config.num_sub_heads}")
        self._sub_head[head] = index

    def eval_heads(self) -> dict[str, int]:
        return {"main": self.config.n_clusters, "over": self.config.over_clusters}

    def inference_net(self, head: str = "main", sub_head: int | None = None) -> nn.Module:
        module = self._head_module(head)
        index = self._sub_head[head] if sub_head is None else sub_head
        if not 0 <= index < module.num_sub_heads:
            raise ConfigError(f"sub-head {index} does not exist; num_sub_heads is {module.num_sub_heads}")
        return Net10aInferenceNet(self.adapter, self.net.trunk, module.heads[index])

    def input_spec(self) -> InputSpec:
        c = self.config
        if c.backbone is not None:
            stride = self.net.trunk.stride
            return c.input.spec(c.channels, stride=stride, min_size=stride, default=backbone_normalisation(c))
        return c.input.spec(c.channels, stride=STRIDE, min_size=min_input_size())

    def _head_module(self, head: str):
        if head not in _HEAD_OF:
            raise ConfigError(f"unknown head {head!r}; IIC has {sorted(_HEAD_OF)}")
        return self.net.head(_HEAD_OF[head])


def _validate(c: IICConfig) -> None:
    c.input.check("IICConfig", c.channels)
    if c.n_clusters < 1 or c.over_clusters < 1 or c.num_sub_heads < 1:
        raise ConfigError("IICConfig.n_clusters, over_clusters and num_sub_heads must be >= 1")
    if c.half_T < 0:
        raise ConfigError(f"IICConfig.half_T must be >= 0, got {c.half_T}")
    if c.head_schedule not in ("epoch", "step", "both"):
        raise ConfigError(f"IICConfig.head_schedule must be 'epoch', 'step' or 'both', got {c.head_schedule!r}")
    if c.joint not in JOINT_IMPLS:
        raise ConfigError(f"IICConfig.joint must be one of {JOINT_IMPLS}, got {c.joint!r}")
    if not 0.0 <= c.flip_p <= 1.0:
        raise ConfigError(f"IICConfig.flip_p must be in [0, 1], got {c.flip_p}")
    if c.head_padding not in (0, 1):
        raise ConfigError(f"IICConfig.head_padding must be 0 or 1, got {c.head_padding}")
    if c.loss_grid not in ("input", "features") or (c.loss_grid == "features" and c.backbone is None):
        raise ConfigError(f"IICConfig.loss_grid must be 'input', or 'features' with a backbone; got "
                          f"{c.loss_grid!r} with backbone {'set' if c.backbone is not None else 'null'}")
    if c.width <= 0:
        raise ConfigError(f"IICConfig.width must be positive, got {c.width}")
    if not 0 <= c.inference_sub_head < c.num_sub_heads:
        raise ConfigError(f"IICConfig.inference_sub_head {c.inference_sub_head} is not below num_sub_heads "
                          f"{c.num_sub_heads}")
    if c.input.native_size is not None and c.input.native_size < min_input_size():
        raise ConfigError(f"IICConfig.input.native_size must be at least {min_input_size()}, got "
                          f"{c.input.native_size}")
