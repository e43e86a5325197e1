"""Self-attention block of Autoregressive Clustering (Ouali et al., ECCV 2020), masked by the ordering's ranks.

The paper only says attention blocks give "a larger receptive field and a larger set of possible orderings"
[Q]; the design is docs/METHODS.md §3.5 [P]:
  Q, K, V = 1x1 convs (d_k = d_v = C/2 by default), logits = QᵀK / sqrt(d_head), mask -> softmax over keys,
  out = 1x1(attn · V) (d_v -> C), then concat with x and a 1x1 fuse (2C -> C). No positional encoding.
Mask: cell p may attend to q iff rank_o(q) <= rank_o(p) (inclusive; the features at q already exclude q in
strict mode, and every row keeps its diagonal so the softmax never sees an all -inf row).

Departs from the only reimplementation (Max-Manning/autoregunsupseg), on purpose: it indexes the mask rows by
scan position instead of by cell (wrong for orderings 2-8), masks *after* the softmax without renormalising,
and has no sqrt(d_k) scaling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.methods.ac.orderings import OrderedLayer, rank_map


class SelfAttention2d(nn.Module):
    """Unmasked block: x (B, C, H, W) -> fuse([x, proj(attn(x))]) (B, C, H, W). The inference form."""

    def __init__(self, channels: int, heads: int = 1, key_channels: int | None = None,
                 value_channels: int | None = None):
        super().__init__()
        d_k = key_channels or max(1, channels // 2)
        d_v = value_channels or max(1, channels // 2)
        if d_k % heads or d_v % heads:
            raise ValueError(f"key/value channels ({d_k}, {d_v}) must be divisible by heads={heads}")
        self.channels, self.heads = channels, heads
        self.query = nn.Conv2d(channels, d_k, 1)
        self.key = nn.Conv2d(channels, d_k, 1)
        self.value = nn.Conv2d(channels, d_v, 1)
        self.proj = nn.Conv2d(d_v, channels, 1)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # (B, D, H, W) -> (B, heads, H*W, D/heads)
        b, d, h, w = t.shape
        return t.reshape(b, self.heads, d // self.heads, h * w).transpose(2, 3)

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask`` (N, N) bool, True where query cell p may attend to key cell q (row p, column q)."""
        b, _, h, w = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        if mask is None:  # explicit math: the form export writes to ONNX
            logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, heads, N, N)
            out = logits.softmax(dim=-1) @ v
        else:  # mask applied to the logits before the softmax (-inf where False)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(2, 3).reshape(b, -1, h, w)  # (B, d_v, H, W)
        return self.fuse(torch.cat([x, self.proj(out)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x, None)


class MaskedSelfAttention2d(OrderedLayer):
    """:class:`SelfAttention2d` whose keys are restricted to cells not later than the query in the ordering."""

    def __init__(self, channels: int, heads: int = 1, key_channels: int | None = None,
                 value_channels: int | None = None):
        super().__init__()
        self.block = SelfAttention2d(channels, heads, key_channels, value_channels)
        self._mask_cache: dict[tuple[int, int, int, str], torch.Tensor] = {}

    def rank_mask(self, oid: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(H*W, H*W) bool: [p, q] = rank_o(q) <= rank_o(p). Cached for the latest grid size."""
        key = (oid, height, width, str(device))
        if key not in self._mask_cache:
            if any(k[1:] != key[1:] for k in self._mask_cache):
                self._mask_cache.clear()
            ranks = torch.from_numpy(rank_map(oid, height, width).ravel()).to(device)
            self._mask_cache[key] = ranks.view(1, -1) <= ranks.view(-1, 1)
        return self._mask_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if self.ordering is None:
            return self.block(x)
        return self.block.attend(x, self.rank_mask(self.ordering, x.shape[2], x.shape[3], x.device))

    def to_plain(self) -> SelfAttention2d:
        """The unmasked block itself (same parameters)."""
        return self.block

    def extra_repr(self) -> str:
        return f"ordering={self.ordering}"
