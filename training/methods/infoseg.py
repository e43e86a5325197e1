"""InfoSeg (Harb & Knöbelreiter, GCPR 2021): segmentation by maximising MI between local and class features.

Paper: "InfoSeg: Unsupervised Semantic Image Segmentation with Mutual Information Maximization", arXiv 2110.03477.
There is no public code. The verified content (docs/METHODS.md §4.1) is: local features L (block C) and K
global features H_k (block D, K = number of classes); segmentation step V_ijk = softmax_k(tau <L_ij, H_k>),
k_ij = argmax_k V_ijk; MI step S_ij = sum_k V_ijk H_k and max E_X[1/(UV) sum_ij I(L_ij; S_ij)] with Deep
InfoMax's Jensen-Shannon estimator (Hjelm et al. 2019; ``training.losses.infomax``).

Choices where the paper (as available) is silent. Each is a field of :class:`InfoSegConfig`; the default is the
proposal [P] of docs/METHODS.md §4.5, with its row there and the reason:

* ``tau = "inv_sqrt"`` (B1): tau = 1/sqrt(C_f), the scaled dot product, giving O(1) logits at init. Also a
  number (e.g. 1.0), or ``"learnable"`` (log tau is a parameter initialised at 1/sqrt(C_f)). Learnable tau needs
  ``no_detach=True``: with V detached nothing downstream of tau receives a gradient.
* ``negatives = "batch"`` (B2): L_b(p) against S_b'(p) of every other image b' of the batch at the *same*
  location, DIM's product-of-marginals sampling restricted to one location. Other locations of the same image
  would be false negatives, and pairing different locations would let the critic use position.
  ``"batch+classes"`` adds the same image's other class features <L_b(p), H_b[k']>, k' != argmax V_b(p), as a
  second negative distribution (the negative term becomes the even mixture of the two means).
* ``no_detach = False`` (B3): the paper's "two-step learning procedure" read as EM-like: V is computed without a
  graph (step 1), S from the detached V (step 2), one Adam step per batch, no inner alternation loop.
* Critic (B4): the plain dot product <L, S> of the projected features, as DIM's local/global critic; no
  separate critic network.
* ``local_block = "C"``, ``global_block = "D"``, ``feature_dim = 256``, ``width = 64``,
  ``blocks_per_stage = (2, 2, 2, 2)``, ``global_hidden = 1024`` (B5): ResNet-18 BasicBlocks with a 3x3/1 stem
  and no max-pool, so blocks A-D sit at strides 1, 2, 4, 8 and L is on a 1/4 grid (32x32 at 128 px); DIM-style
  projections to C_f = 256. ``width`` / ``blocks_per_stage`` shrink the encoder for CPU runs (``infoseg_scratch_cpu``).
* ``hflip_p = 0.5`` (B6): the augmentation is a random crop (done by the dataset) and a horizontal flip, drawn
  here per image from the global torch RNG. Adam lr 1e-4 (DIM's default) is ``MethodConfig.lr``.
* ``measure = "JSD"``: the paper's estimator; DIM's other f-divergences are available for ablation.
* ``iic_train_mask = False`` (S2): InfoSeg trains on "solely unlabeled images", so every location enters the
  loss. ``True`` excludes locations whose pixels are mostly ``label == 255`` (IIC's COCO stuff mask, when the
  dataset marks non-stuff as 255), only to compare with IIC's protocol.
* ``gather_negatives = False``: under DDP the negatives come from the rank's own batch, so W ranks x b images
  optimise the objective of batch b, not W*b (fewer negatives, a different estimator bias); with b = 1 there are
  none and the step raises. ``True`` gathers S from all ranks (through ``ctx.all_reduce_sum``, differentiable),
  which restores the W*b objective; it needs the same per-rank batch size on every rank (the engine's loader
  gives full batches only), and b = 1 also needs ``train.sync_batchnorm`` (the global MLP's BatchNorm1d).
* Inputs (§4.4, "as IIC"): images only divided by 255 (``input_mean`` 0, ``input_std`` 1 per channel); COCO
  RGB + Sobel (``sobel = "append"``), Potsdam RGBIR (4 channels).

Inference (:meth:`InfoSeg.inference_net`) is the same network without step 2: V = softmax(tau <L, H_k>) on the
1/4 grid, bilinearly upsampled to the input size; the argmax of that is the prediction (§4.3). The H_k come from
global average pooling, so a pixel's cluster depends on the whole frame: predict on frames of the training field
of view (``input.native_size``), not on small tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from training.errors import ConfigError
from training.losses.infomax import MEASURES, infoseg_loss
from training.methods.base import FitContext, Method, MethodConfig, batch_images, batch_labels, register_method
from training.nets.backbones import backbone_normalisation, build_backbone
from training.nets.infoseg_net import BLOCK_NAMES, InfoSegNet, class_assignment, cluster_logits
from usseg_sdk.meta import InputSpec

_IGNORE = 255


@dataclass
class InfoSegConfig(MethodConfig):
    """InfoSeg's options; see the module docstring for the reason behind each default."""

    width: int = 64  # stem / block A channels; blocks B, C, D have 2x, 4x, 8x
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2)  # BasicBlocks in A, B, C, D (ResNet-18)
    local_block: str = "C"  # L comes from this block's output
    global_block: str = "D"  # H comes from this block's output
    feature_dim: int = 256  # C_f of L and of each H_k
    global_hidden: int = 1024  # hidden width of the global MLP
    tau: float | str = "inv_sqrt"  # "inv_sqrt" (1/sqrt(C_f)), a positive number, or "learnable"
    no_detach: bool = False  # back-propagate through V as well
    negatives: str = "batch"  # "batch" or "batch+classes"
    measure: str = "JSD"  # DIM f-divergence: JSD (paper), GAN, KL, X2, H2, RKL
    gather_negatives: bool = False  # DDP: negatives from every rank's batch
    hflip_p: float = 0.5
    iic_train_mask: bool = False  # exclude label==255 locations from the loss (IIC's COCO protocol)

    def __post_init__(self) -> None:
        self._check_architecture()
        self._check_objective()
        self._check_input()

    def _check_architecture(self) -> None:
        for name in ("local_block", "global_block"):
            if getattr(self, name) not in BLOCK_NAMES:
                raise ConfigError(f"InfoSegConfig.{name} must be one of {BLOCK_NAMES}, got {getattr(self, name)!r}")
        if len(self.blocks_per_stage) != 4 or min(self.blocks_per_stage) < 1:
            raise ConfigError(f"InfoSegConfig.blocks_per_stage needs 4 positive counts (A-D), "
                              f"got {self.blocks_per_stage}")
        for name in ("n_clusters", "width", "feature_dim", "global_hidden"):
            if getattr(self, name) < 1 or (name == "n_clusters" and self.n_clusters < 2):
                raise ConfigError(f"InfoSegConfig.{name} must be positive (n_clusters >= 2), got {getattr(self, name)}")

    def _check_objective(self) -> None:
        if isinstance(self.tau, str) and self.tau not in ("inv_sqrt", "learnable"):
            raise ConfigError(f"InfoSegConfig.tau must be 'inv_sqrt', 'learnable' or a number, got {self.tau!r}")
        if not isinstance(self.tau, str) and not self.tau > 0:
            raise ConfigError(f"InfoSegConfig.tau must be positive, got {self.tau}")
        if self.tau == "learnable" and not self.no_detach:
            raise ConfigError("InfoSegConfig.tau='learnable' needs no_detach=True: with V detached, tau gets no "
                              "gradient")
        if self.negatives not in ("batch", "batch+classes"):
            raise ConfigError(f"InfoSegConfig.negatives must be 'batch' or 'batch+classes', got {self.negatives!r}")
        if self.measure not in MEASURES:
            raise ConfigError(f"InfoSegConfig.measure must be one of {MEASURES}, got {self.measure!r}")
        if not 0.0 <= self.hflip_p <= 1.0:
            raise ConfigError(f"InfoSegConfig.hflip_p must be in [0, 1], got {self.hflip_p}")

    def _check_input(self) -> None:
        self.input.check("InfoSegConfig", self.channels)

    @property
    def tau_init(self) -> float:
        return 1 / math.sqrt(self.feature_dim) if isinstance(self.tau, str) else float(self.tau)



@register_method("infoseg")
class InfoSeg(Method):
    """InfoSeg: one view per image, loss = JSD estimate of mean_p I(L(p); S(p)) with same-location negatives."""

    config_class = InfoSegConfig
    config: InfoSegConfig

    def __init__(self, config: InfoSegConfig):
        super().__init__(config)
        c = config
        backbone, adapter = build_backbone(c, "InfoSegConfig") if c.backbone is not None else (
            None, c.input.adapter(c.channels))
        self.net = InfoSegNet(in_channels=c.channels, n_clusters=c.n_clusters, adapter=adapter, backbone=backbone,
                              width=c.width,
                              blocks_per_stage=c.blocks_per_stage,
                              local_block=c.local_block, global_block=c.global_block, feature_dim=c.feature_dim,
                              global_hidden=c.global_hidden, tau=c.tau_init, learn_tau=c.tau == "learnable")

    # -- training ------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], ctx: FitContext) -> dict[str, Any]:
        images = self._check_images(batch, ctx)  # (B, C, H, W)
        labels = batch_labels(batch, images, "InfoSeg") if self.config.iic_train_mask else None
        images, labels = self._random_hflip(images, labels)
        local, globals_ = self.net.features(images)  # (B, C_f, U, V), (B, K, C_f)
        grid = local.shape[2:]
        # The segmentation step and the estimator run in float32 even under AMP: the critic's scores are dot
        # products over C_f channels and softplus/softmax of them lose too much in bfloat16; they cost little.
        with torch.autocast(images.device.type, enabled=False):
            local, globals_ = _full_precision(local.flatten(2)), _full_precision(globals_)  # (B, C_f, P), (B, K, C_f)
            tau = self.net.tau()
            probs, assigned = class_assignment(local, globals_, tau, detach=not self.config.no_detach)
            valid = self._valid_locations(labels, grid)  # (B, P) or None
            class_scores, class_mask = self._class_negatives(local, globals_, probs)
            assigned, valid, offset = self._gather(assigned, valid, ctx)
            loss = infoseg_loss(local, assigned, self.config.measure, valid, class_scores, class_mask, offset)
        return {"loss": loss, **self._logs(loss, probs, tau)}

    def _check_images(self, batch: dict[str, torch.Tensor], ctx: FitContext) -> torch.Tensor:
        images = batch_images(batch, "InfoSeg", self.config.channels)
        if images.shape[0] < 2 and not (self.config.gather_negatives and ctx.distributed):
            raise ConfigError(f"InfoSeg takes its negatives from the other images of the batch: a batch of "
                              f"{images.shape[0]} image has none; use train.batch_size >= 2")
        return images

    def _random_hflip(self, images: torch.Tensor, labels: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        flip = (torch.rand(images.shape[0]) < self.config.hflip_p).to(images.device)  # (B,) global CPU RNG
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if labels is not None:
            labels = torch.where(flip[:, None, None], labels.flip(-1), labels)
        return images, labels

    @staticmethod
    def _valid_locations(labels: torch.Tensor | None, grid: torch.Size) -> torch.Tensor | None:
        """(B, H, W) labels -> (B, P) 0/1: a location counts when at least half its pixels are labelled."""
        if labels is None:
            return None
        labelled = (labels != _IGNORE).float().unsqueeze(1)  # (B, 1, H, W)
        share = F.adaptive_avg_pool2d(labelled, tuple(grid))  # (B, 1, U, V)
        return (share >= 0.5).float().flatten(1)  # (B, P)

    def _class_negatives(self, local: torch.Tensor, globals_: torch.Tensor, probs: torch.Tensor
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Same-image other-class scores <L_b(p), H_b[k']> (B, K, P) and their mask k' != argmax V_b(p)."""
        if self.config.negatives != "batch+classes":
            return None, None
        scores = cluster_logits(local, globals_, torch.ones((), device=local.device))  # (B, K, P), critic = dot
        mask = torch.ones_like(scores).scatter_(1, probs.argmax(dim=1, keepdim=True), 0.0)
        return scores, mask

    def _gather(self, assigned: torch.Tensor, valid: torch.Tensor | None, ctx: FitContext
                ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """With ``gather_negatives`` under DDP: S (and the valid mask) of every rank, and this rank's offset."""
        if not (self.config.gather_negatives and ctx.distributed):
            return assigned, valid, 0
        assigned = _all_gather(assigned, ctx)  # (W*B, C_f, P)
        if valid is not None:
            valid = _all_gather(valid, ctx)
        return assigned, valid, ctx.rank * assigned.shape[0] // ctx.world_size

    def _logs(self, loss: torch.Tensor, probs: torch.Tensor, tau: torch.Tensor) -> dict[str, float]:
        offset = 2 * math.log(2) if self.config.measure == "JSD" else 0.0
        usage = probs.detach().mean(dim=(0, 2))  # (K,) mean assignment of each cluster
        return {
            "mi_estimate": offset - float(loss.detach()),  # the f-divergence bound; JSD's is at most 2 ln 2
            "cluster_usage_entropy": float(-(usage * usage.clamp_min(1e-12).log()).sum()),  # log K = balanced
            "tau": float(tau.detach()),
        }

    # -- inference -----------------------------------------------------------------------------------
    def input_spec(self) -> InputSpec:
        """Stride 8: the deepest stage (block D) then tiles the frame exactly, as it did the training crops
        (128 = 8 x 16, 200 = 8 x 25); the net accepts any size, but other sizes shift the grids against the
        pixels and let D's zero padding into the global average. min_size: one block-D cell."""
        c = self.config
        default = backbone_normalisation(c) if c.backbone is not None else None
        return c.input.spec(c.channels, stride=self.net.stride, min_size=self.net.stride, default=default,
                            normalized_in_graph=True)

    def eval_heads(self) -> dict[str, int]:
        return {"main": self.config.n_clusters}

    def inference_net(self, head: str = "main") -> InfoSegNet:
        """The net itself (shares the weights): (B, C, H, W) in [0, 1] -> V upsampled, (B, K, H, W).

        It is returned in whatever mode the method is in; :meth:`predict` and export put it in eval mode.
        """
        if head != "main":
            raise ConfigError(f"InfoSeg has one head, 'main'; got {head!r}")
        return self.net


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _all_gather(t: torch.Tensor, ctx: FitContext) -> torch.Tensor:
    """Differentiable all-gather along dim 0 built on ``ctx.all_reduce_sum``: each rank fills its own slot."""
    slots = [t if r == ctx.rank else torch.zeros_like(t) for r in range(ctx.world_size)]
    return ctx.all_reduce_sum(torch.cat(slots, dim=0))  # (W * B, ...)
