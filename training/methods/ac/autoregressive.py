"""Encoder-decoder Φ = d ∘ g_ar ∘ h of Autoregressive Clustering (Ouali et al., ECCV 2020), docs/METHODS.md §3.6.

The paper gives only "an encoder-decoder type network" with masked convolutions and attention blocks [Q]; the
layout and widths follow the one reimplementation's h / g_ar / d sections [I], with our proposals [P]:

  h     conv3x3 (C_in -> w, stride s1, pad 1) -> BN -> ReLU -> maxpool 3x3/2 (pad 1); grid stride 2 * s1
  g_ar  masked 3x3 type A (strict; B when inclusive), w -> w, BN, ReLU, no shortcut   <- first masked layer
        n_blocks AR blocks, C -> 2C each (64 -> 128 -> 256 -> 512 -> 1024 by default):
          1. masked 3x3 type B (C -> 2C) -> BN -> ReLU -> 1x1 -> BN -> ReLU, + x zero-padded in channels
          2. x + ReLU(1x1(ReLU(1x1(x))))      3. the same again
        masked self-attention after block ``attention_after`` (2)
  d     [BN -> ReLU, ``head_norm``] then a 1x1 conv per head (K main, K_over auxiliary), bilinear upsampling
        to the input size (align_corners=False), softmax over clusters.

Orderings act on h's output grid (input-pixel causality is approximate: h's receptive field is 5 px at s1 = 1,
7 px at s1 = 2). In strict mode the grid output at p depends only on cells earlier than p. Departures from the
reimplementation, on purpose: the first masked layer is type A without shortcut (it includes the current cell
and wraps the masked conv in an identity shortcut), the block-1 BNs (it has none), kaiming init (it uses
Xavier), and no hard-coded attention size. ``head_norm`` (BN -> ReLU before the 1x1 heads, on by default) is
ours, not the proposal's: the residual stream that reaches d has no normalisation and grows with depth (std ~20 at init
for the default widths), so kaiming-initialised heads start with saturated softmaxes (max probability ~0.98)
and the MI gradient vanishes; with it the heads see BN-ReLU features as IIC's head does (its trunk ends in
conv-BN-ReLU). ``head_norm=False`` is the §3.6 proposal literally. Train-mode BN mixes positions through batch
statistics; that leak is accepted (§3.6) and is absent at the grid-causality check, which runs BN in eval mode.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from training.methods.ac.masked_attention import MaskedSelfAttention2d
from training.methods.ac.masked_conv import MaskedConv2d

CausalMode = Literal["strict", "inclusive"]


class ARDownBlock(nn.Module):
    """Sub-block 1: masked 3x3 type B (C -> 2C) -> BN -> ReLU -> 1x1 -> BN -> ReLU, plus x padded to 2C."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pad_channels = out_channels - in_channels
        self.body = nn.Sequential(
            MaskedConv2d(in_channels, out_channels, 3, mask_type="B"), nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))


class PointwiseResidual(nn.Module):
    """Sub-blocks 2 and 3: x + ReLU(1x1(ReLU(1x1(x)))). 1x1 convs keep causality (they see only the cell)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def ar_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ARDownBlock(in_channels, out_channels), PointwiseResidual(out_channels),
                         PointwiseResidual(out_channels))


class AutoregressiveSegNet(nn.Module):
    """Φ(x; o): (B, C_in, H, W) -> cluster probabilities (B, K, H, W); the ordering o is set with
    :func:`training.methods.ac.orderings.use_ordering` (None = plain convolutions, the paper's inference)."""

    def __init__(self, in_channels: int, heads: dict[str, int], width: int = 64, n_blocks: int = 4,
                 grid_stride: int = 4, attention: bool = True, attention_after: int = 2, attention_heads: int = 1,
                 mode: CausalMode = "strict", head_norm: bool = True, backbone: nn.Module | None = None):
        """``backbone`` (a dense trunk with ``out_channels`` at stride 4, not in the paper) replaces h: its features,
        projected to ``width`` by 1x1 conv -> BN -> ReLU, are the grid the orderings act on."""
        super().__init__()
        if grid_stride not in (2, 4):
            raise ValueError(f"grid_stride must be 2 or 4, got {grid_stride}")
        if mode not in ("strict", "inclusive"):
            raise ValueError(f"mode must be 'strict' or 'inclusive', got {mode!r}")
        if attention and not 1 <= attention_after <= n_blocks:
            raise ValueError(f"attention_after must be in 1..{n_blocks}, got {attention_after}")
        self.grid_stride, self.mode = grid_stride, mode
        if backbone is not None:
            self.stem: nn.Module = nn.Sequential(  # h on a backbone: its stride-4 features projected to width
                backbone, nn.Conv2d(backbone.out_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        else:
            self.stem = nn.Sequential(  # h
                nn.Conv2d(in_channels, width, 3, stride=grid_stride // 2, padding=1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        layers: list[nn.Module] = [  # g_ar
            MaskedConv2d(width, width, 3, mask_type="A" if mode == "strict" else "B"), nn.BatchNorm2d(width),
            nn.ReLU()]
        channels = width
        for i in range(1, n_blocks + 1):
            layers.append(ar_block(channels, 2 * channels))
            channels *= 2
            if attention and i == attention_after:
                layers.append(MaskedSelfAttention2d(channels, heads=attention_heads))
        self.trunk = nn.Sequential(*layers)
        self.out_channels = channels
        # Ours, not the proposal's: BN + ReLU before d (module docstring); Identity is docs/METHODS.md §3.6 literally.
        self.head_norm = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU()) if head_norm else nn.Identity()
        self.heads = nn.ModuleDict({name: nn.Conv2d(channels, k, 1, bias=False) for name, k in heads.items()})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """docs/METHODS.md §3.6 [P], as IIC: kaiming-normal (fan_in, relu) convs, zero biases, BN weight 1 / bias 0.
        A backbone's trunk keeps its own initialisation (and later its pretrained weights)."""
        trunk = {id(m) for b in self.modules() if hasattr(b, "trunk_parameters") for m in b.modules()}
        for m in self.modules():
            if id(m) in trunk:
                continue
            if isinstance(m, nn.Conv2d | MaskedConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def grid_logits(self, features: torch.Tensor, head: str = "main") -> torch.Tensor:
        """d's 1x1 conv on g_ar(features): h's output grid (B, w, h, w') -> logits (B, K, h, w')."""
        return self._head(head)(self.head_norm(self.trunk(features)))

    def forward_heads(self, x: torch.Tensor, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Probabilities (B, K_head, H, W) of several heads from one pass of h and g_ar."""
        features = self.head_norm(self.trunk(self.stem(x)))  # (B, C, H/s, W/s)
        out = {}
        for head in heads:
            logits = F.interpolate(self._head(head)(features), size=x.shape[-2:], mode="bilinear",
                                   align_corners=False)
            out[head] = logits.softmax(dim=1)  # (B, K, H, W)
        return out

    def forward(self, x: torch.Tensor, head: str = "main") -> torch.Tensor:  # (B, C_in, H, W) -> (B, K, H, W)
        return self.forward_heads(x, (head,))[head]

    def _head(self, head: str) -> nn.Module:
        if head not in self.heads:
            raise ValueError(f"unknown head {head!r}; heads: {sorted(self.heads)}")
        return self.heads[head]
