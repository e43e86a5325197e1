"""Masked convolution with footnote 2's Shift, for Autoregressive Clustering (Ouali et al., ECCV 2020).

One shared weight tensor serves every ordering (docs/METHODS.md §3.4): under ordering o the layer zero-pads the input
asymmetrically (``shift_padding``), runs a "valid" convolution with ``weight * mask_o``, and so sees only the
predecessors of each cell (plus the cell itself for type B). With ``ordering = None`` it is the plain
``Conv2d(padding=k//2)`` with the full kernel: the paper's inference, "fall back to the standard convolution".

Masked weights. Autograd already gives exact zeros to taps masked under the step's orderings; two hooks make
that robust and keep taps that no allowed ordering ever shows at their initial values:
  * :meth:`MaskedConv2d.mask_grad_` (from the method's ``after_backward``) zeroes the gradient of every tap
    masked under all orderings used since the last optimiser step (also where a NaN/inf would have leaked);
  * :meth:`MaskedConv2d.restore_frozen_` (from ``on_step_end``) writes back the initial values of the taps
    hidden under *every* allowed ordering (:meth:`freeze_never_visible`). Adam's weight decay and momentum move
    an entry even with a zero gradient, so zeroing gradients alone cannot keep it bit-identical.
With all 8 (or 16) orderings no 3x3 tap is hidden everywhere (each is seen under >= 6 of 8 raster orders,
docs/METHODS.md §3.4); frozen taps appear when the allowed set is restricted (e.g. ids (1, 2): the type-A tap (2, 1)).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.methods.ac.orderings import ALL_IDS, MaskType, OrderedLayer, conv_mask, shift_padding


class MaskedConv2d(OrderedLayer):
    """k x k convolution (stride 1) whose taps follow the current ordering; ``mask_type`` "A" or "B"."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, mask_type: MaskType = "B",
                 bias: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernel_size
        self.mask_type = mask_type
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        masks = np.stack([conv_mask(o, kernel_size, mask_type) for o in (0, *ALL_IDS)])  # (17, k, k)
        self.register_buffer("masks", torch.from_numpy(masks).float(), persistent=False)
        self.paddings = [shift_padding(o, kernel_size) for o in (0, *ALL_IDS)]
        # Taps hidden under every allowed ordering and their initial values (see the module docstring).
        self.register_buffer("frozen_taps", torch.zeros(kernel_size, kernel_size, dtype=torch.bool))
        self.register_buffer("frozen_values", torch.zeros(out_channels, in_channels, 0))
        nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        if self.ordering is None:
            return F.conv2d(x, self.weight, self.bias, padding=self.kernel_size // 2)
        o = self.ordering
        return F.conv2d(F.pad(x, self.paddings[o]), self.weight * self.masks[o], self.bias)

    def keep_mask(self, ordering_ids: Iterable[int]) -> torch.Tensor:
        """(k, k) bool: taps visible under at least one of ``ordering_ids``."""
        ids = list(ordering_ids)
        return (self.masks[ids] > 0).any(dim=0) if ids else torch.zeros_like(self.frozen_taps)

    @torch.no_grad()
    def freeze_never_visible(self, allowed_ids: Iterable[int]) -> None:
        """Record the taps hidden under every allowed ordering and their current (initial) values."""
        self.frozen_taps = ~self.keep_mask(allowed_ids)
        self.frozen_values = self.weight[:, :, self.frozen_taps].clone()  # (C_out, C_in, n_frozen)

    @torch.no_grad()
    def restore_frozen_(self) -> None:
        if bool(self.frozen_taps.any()):
            self.weight[:, :, self.frozen_taps] = self.frozen_values.to(self.weight.dtype)

    @torch.no_grad()
    def mask_grad_(self, used_ids: Iterable[int]) -> None:
        """Zero the gradient of taps hidden under all ``used_ids`` (the orderings of this optimiser step)."""
        if self.weight.grad is not None:
            self.weight.grad.masked_fill_(~self.keep_mask(used_ids), 0.0)

    def to_plain(self) -> nn.Conv2d:
        """A real ``nn.Conv2d(padding=k//2)`` holding this layer's full weight (the same Parameter objects)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, padding=self.kernel_size // 2,
                         bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        conv.weight = self.weight
        if self.bias is not None:
            conv.bias = self.bias
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"mask_type={self.mask_type}, bias={self.bias is not None}, ordering={self.ordering}")
