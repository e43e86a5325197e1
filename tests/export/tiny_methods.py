"""Small in-process methods for export tests (not registered: the registry tests cover the real methods).

``TinySeg``: InputAdapter -> conv3x3 -> BN -> ReLU -> conv3x3 (residual) -> BN -> ReLU -> two 1x1 heads (main K,
over K_over) -> softmax; stride 1. ``TinyAC``: an AC encoder-decoder (``AutoregressiveSegNet``, masked convs and
masked attention) behind the same interface, inference with ``ordering=None``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.methods.ac.autoregressive import AutoregressiveSegNet
from training.methods.ac.orderings import use_ordering
from training.methods.base import Method, MethodConfig
from training.nets.input_adapter import InputAdapter
from usseg_sdk.meta import InputSpec


@dataclass
class TinyConfig(MethodConfig):
    n_clusters: int = 4
    over_clusters: int = 6
    hidden: int = 6


class _Body(nn.Module):
    def __init__(self, c: TinyConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(c.channels, c.hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c.hidden)
        self.conv2 = nn.Conv2d(c.hidden, c.hidden, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + h)  # residual: bn1's output is used twice, conv outputs once


class _Inference(nn.Module):
    def __init__(self, adapter: nn.Module, body: nn.Module, head: nn.Module):
        super().__init__()
        self.adapter, self.body, self.head = adapter, body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.adapter(x))).softmax(dim=1)


class TinySeg(Method):
    name = "tiny_seg"
    config_class = TinyConfig

    def __init__(self, config: TinyConfig | None = None):
        super().__init__(config or TinyConfig())
        c = self.config
        self.adapter = InputAdapter((0.4,) * c.channels, (0.2,) * c.channels)
        self.body = _Body(c)
        self.heads = nn.ModuleDict({"main": nn.Conv2d(c.hidden, c.n_clusters, 1),
                                    "over": nn.Conv2d(c.hidden, c.over_clusters, 1)})

    def training_step(self, batch, ctx):
        probs = self.inference_net()(batch["image"])
        marginal = probs.mean(dim=(0, 2, 3))
        loss = (probs * probs.clamp_min(1e-8).log()).sum(1).mean() * -1 + (marginal * marginal.log()).sum()
        return {"loss": loss}

    def input_spec(self) -> InputSpec:
        c = self.config
        return InputSpec(channels=c.channels, color_order="gray" if c.channels == 1 else "rgb",
                         mean=(0.4,) * c.channels, std=(0.2,) * c.channels, stride=1, min_size=4)

    def eval_heads(self) -> dict[str, int]:
        return {"main": self.config.n_clusters, "over": self.config.over_clusters}

    def inference_net(self, head: str = "main") -> nn.Module:
        return _Inference(self.adapter, self.body, self.heads[head])


def train_steps(method: Method, images: torch.Tensor, steps: int = 3, lr: float = 0.05) -> None:
    """A few optimiser steps with the method's own loss (BN statistics move too)."""
    method.train()
    optimizer = torch.optim.Adam(method.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        method.training_step({"image": images}, None)["loss"].backward()
        optimizer.step()
    method.eval()


@dataclass
class TinyACConfig(MethodConfig):
    n_clusters: int = 4
    width: int = 8
    n_blocks: int = 2


class TinyAC(Method):
    """An AC net behind the Method interface: training under orderings, inference with ordering None."""

    name = "tiny_ac"
    config_class = TinyACConfig

    def __init__(self, config: TinyACConfig | None = None):
        super().__init__(config or TinyACConfig())
        c = self.config
        self.adapter = InputAdapter((0.4,), (0.2,))
        self.net = AutoregressiveSegNet(1, {"main": c.n_clusters}, width=c.width, n_blocks=c.n_blocks,
                                        attention=True, attention_after=1)

    def training_step(self, batch, ctx):
        x = self.adapter(batch["image"])
        with use_ordering(self.net, 1):
            p1 = self.net(x)
        with use_ordering(self.net, 2):
            p2 = self.net(x)
        joint = torch.einsum("bkhw,bjhw->kj", p1, p2)
        joint = (joint + joint.t()) / joint.sum() / 2
        marg = joint.sum(1)
        mi = (joint * (joint.clamp_min(1e-8).log() - marg[:, None].log() - marg[None, :].log())).sum()
        return {"loss": -mi}

    def input_spec(self) -> InputSpec:
        return InputSpec(channels=1, color_order="gray", mean=(0.4,), std=(0.2,), stride=4, min_size=8)

    def inference_net(self, head: str = "main") -> nn.Module:
        return nn.Sequential(self.adapter, self.net)
