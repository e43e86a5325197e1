"""The Method interface every training method implements, and the registry that finds methods by name.

The engine (``training/engine.py``) knows nothing about methods: it builds one with :func:`build_method`, calls
``training_step(batch, ctx)`` and the optional hooks, steps the optimiser the method configures, and saves
``state_dict()`` plus :meth:`Method.extra_state`. Export consumes :meth:`Method.inference_net`.

Batch contract (see docs/ARCHITECTURE.md):
    batch["image"]  float32 (B, C, H, W) in [0, 1], channels in ``input_spec().color_order``
    batch["index"]  int64 (B,) dataset index of each image
    batch["label"]  int64 (B, H, W), 255 = ignore; only where the dataset has labels

inference_net contract:
    float32 (B, C, H, W) in [0, 1]  ->  cluster probabilities float32 (B, K, H, W) at the input resolution,
    H and W multiples of ``input_spec().stride``; normalisation and Sobel happen inside; eval mode; no masks,
    no augmentation, no ``if self.training`` branches that matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from training.errors import DataError, UnknownMethodError
from training.nets.backbones import BackboneConfig, DenseBackbone
from training.nets.input_adapter import LEGACY_INPUT_KEYS, InputConfig, migrate_legacy_keys
from training.registry import Registry
from training.typed_config import config_from_dict, config_to_dict  # noqa: F401  (re-exported)
from usseg_sdk.meta import InputSpec


@dataclass
class MethodConfig:
    """Fields every method has. Methods subclass this dataclass and add their own."""

    n_clusters: int = 4  # main head K (= number of classes for Hungarian evaluation)
    channels: int = 1  # 1 grey or 3 RGB input channels (4 for RGBIR)
    lr: float = 1e-4
    weight_decay: float = 0.0
    input: InputConfig = field(default_factory=InputConfig)  # normalisation, Sobel, native size (every method)
    backbone: BackboneConfig | None = None  # a (pretrained) dense trunk; None = the method's own paper network

    # Keys of earlier config versions -> their place now (a checkpoint's saved config stays loadable).
    legacy_keys: ClassVar[dict[str, str]] = LEGACY_INPUT_KEYS


@dataclass
class FitContext:
    """What the engine tells a method's hooks. ``log`` records scalars in the metrics log."""

    device: torch.device
    epoch: int = 0
    step: int = 0  # optimiser steps done so far
    train_loader: Iterable[dict[str, torch.Tensor]] | None = None
    rank: int = 0
    world_size: int = 1
    amp: bool = False
    log: Callable[[dict[str, float]], None] = field(default=lambda logs: None)
    # Differentiable sum of a tensor over all ranks (identity in a single process). A method whose loss is
    # not a mean over samples (IIC's joint matrix, PiCIE's k-means counts/sums) reduces its statistics with
    # it so that W ranks x batch b compute the loss of one batch W*b. Under DDP the engine's gradient
    # averaging then yields the full-batch gradient (each rank back-propagates the same loss).
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    # Run geometry, for methods with schedules (set by the engine before on_fit_start; 0/None when unknown).
    epochs: int = 0
    steps_per_epoch: int = 0  # optimiser steps (= global batches) per epoch
    total_steps: int | None = None  # min(epochs * steps_per_epoch, train.max_steps)
    run_dir: Path | None = None  # where the run writes; None outside the engine

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class Method(nn.Module):
    """Base class of training methods. Subclasses set ``name`` and ``config_class`` and register themselves.

    Parameters, buffers (e.g. PiCIE's centroids) and :meth:`extra_state` are everything a checkpoint holds
    of the method; use the global torch/numpy RNGs (the engine checkpoints them) so a resumed run repeats.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # True for a method fitted whole in ``on_epoch_start`` with no optimiser steps (the k-means baselines, anomaly):
    # the engine stops it after its first step (a monitoring score) instead of running ``train.epochs`` of no-ops.
    gradient_free: ClassVar[bool] = False

    def __init__(self, config: MethodConfig):
        super().__init__()
        self.config = config

    # -- training ------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], ctx: FitContext) -> dict[str, Any]:
        """One step's loss: ``{"loss": scalar tensor, **scalar logs}``. The engine does backward/step."""
        raise NotImplementedError

    def configure_optimizer(self) -> torch.optim.Optimizer:
        if self.gradient_free:
            return torch.optim.SGD([{"params": []}], lr=0.0)  # nothing to train; the engine still checkpoints it
        return torch.optim.Adam(self.param_groups(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def param_groups(self, params: Iterable[nn.Parameter] | None = None) -> list[dict[str, Any]]:
        """Optimiser groups of ``params`` (default: the trainable ones): a fine-tuned backbone trunk's at
        ``backbone.lr_scale`` times the method's learning rate, the rest at it."""
        params = [p for p in self.parameters() if p.requires_grad] if params is None else list(params)
        trunk = {id(p): b.config.lr_scale for b in self.backbones() if b.config.trainable_trunk
                 for p in b.trunk_parameters()}
        groups = [{"params": [p for p in params if id(p) not in trunk]}]
        for scale in sorted(set(trunk.values())):
            scaled = [p for p in params if trunk.get(id(p)) == scale]
            if scaled:
                groups.append({"params": scaled, "lr": self.config.lr * scale})
        return groups

    def parameters_but_frozen_trunks(self) -> list[nn.Parameter]:
        """Every parameter, trainable now or not (a head idle in this step), except a frozen backbone trunk's: what
        IIC and AC, whose heads take turns, give the optimiser."""
        frozen = {id(p) for b in self.backbones() if not b.config.trainable_trunk for p in b.trunk_parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def backbones(self) -> list[DenseBackbone]:
        return [m for m in self.modules() if isinstance(m, DenseBackbone)]

    def prepare_backbones(self) -> None:
        """Load every pretrained backbone's weights unless it has them (a checkpoint's or an earlier call's)."""
        for backbone in self.backbones():
            backbone.ensure_pretrained()

    def on_fit_start(self, ctx: FitContext) -> None:
        """Once, before the first epoch (also after a resume). Subclasses that override it call super()."""
        self.prepare_backbones()

    def on_epoch_start(self, ctx: FitContext) -> None:
        """Before each epoch's first step, e.g. PiCIE's k-means over ``ctx.train_loader``."""

    def on_epoch_end(self, ctx: FitContext) -> None:
        """After each epoch's last step."""

    def on_step_end(self, ctx: FitContext) -> None:
        """After each optimiser step (the place for EMA updates or re-applying constraints)."""

    def after_backward(self, ctx: FitContext) -> None:
        """Between backward and the optimiser step (after unscaling under AMP): e.g. masking gradients."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-serialisable state that is neither parameter nor buffer (e.g. which head trains now)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""

    # -- inference / evaluation ----------------------------------------------------------------------
    def input_spec(self) -> InputSpec:
        """Channels, colour order, normalisation (as applied inside the net), stride, native size."""
        raise NotImplementedError

    def eval_heads(self) -> dict[str, int]:
        """Head name -> number of clusters. ``"main"`` is the head evaluated with Hungarian matching;
        others (e.g. ``"over"``) are over-clustering heads evaluated many-to-one."""
        return {"main": self.config.n_clusters}

    def inference_net(self, head: str = "main") -> nn.Module:
        """The plain module export consumes (see the module docstring). Shares this method's weights."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: torch.Tensor, head: str = "main") -> torch.Tensor:
        """Cluster ids (B, H, W) int64 for float images (B, C, H, W) in [0, 1]."""
        was_training = self.training
        self.eval()
        try:
            return self.inference_net(head)(images).argmax(dim=1)
        finally:
            self.train(was_training)


def batch_images(batch: dict[str, Any], method: str, channels: int) -> torch.Tensor:
    """``batch["image"]`` checked: a float (B, C, H, W) tensor with the configured ``channels``; else DataError."""
    images = batch.get("image")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        desc = (type(images).__name__ if not isinstance(images, torch.Tensor)
                else f"{images.dtype} {tuple(images.shape)}")
        raise DataError(f"{method} needs batch['image'] as a float (B, C, H, W) tensor, got {desc}")
    if images.shape[1] != channels:
        raise DataError(f"batch['image'] has {images.shape[1]} channels, {method} is configured for {channels} "
                        "(method_config.channels)")
    return images


def batch_labels(batch: dict[str, Any], images: torch.Tensor, method: str) -> torch.Tensor:
    """``batch["label"]`` checked for a method training with IIC's label mask: (B, H, W) like ``images``."""
    labels = batch.get("label")
    if not isinstance(labels, torch.Tensor):
        raise DataError(f"{method} iic_train_mask=True needs batch['label'] (B, H, W) with 255 = ignore; the training "
                        "dataset gives no labels (data.train.train_labels: true)")
    if labels.shape != (images.shape[0], *images.shape[2:]):
        raise DataError(f"batch['label'] has shape {tuple(labels.shape)}, expected "
                        f"{(images.shape[0], *images.shape[2:])} to match batch['image']")
    return labels


# -- registry -----------------------------------------------------------------------------------------
METHODS: Registry[type[Method]] = Registry("method", listing="names", attribute="name", package="training.methods",
                                           unknown_error=UnknownMethodError)


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register_method("iic")``. Names are snake_case and unique."""
    return METHODS.register(name)


def available_methods() -> list[str]:
    return METHODS.names()


def get_method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def build_method(name: str, config: dict[str, Any] | MethodConfig | None = None) -> Method:
    """Build a registered method from its config (a dict of overrides, or the config dataclass)."""
    cls = get_method_class(name)
    if not isinstance(config, MethodConfig):
        values = migrate_legacy_keys(dict(config or {}), cls.config_class.legacy_keys, cls.config_class.__name__)
        config = config_from_dict(cls.config_class, values)
    return cls(config)
