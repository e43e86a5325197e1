"""InfoSeg's network: ResNet encoder, DIM-style local and global projections, and the scaled-softmax segmentation.

Harb & Knöbelreiter, "InfoSeg: Unsupervised Semantic Image Segmentation with Mutual Information Maximization"
(GCPR 2021). No public code exists; the layout is docs/METHODS.md §4.3, whose only verified parts are
"local features from the output projection of block C, K global features from the output projection of block D"
and the segmentation step V = softmax_k(tau <L_ij, H_k>), S_ij = sum_k V_ijk H_k (§4.1). Everything else is a
proposal [P] (§4.5), listed with its reason in ``training/methods/infoseg.py``.

The local projection follows Deep InfoMax's ``MI1x1ConvNet`` (rdevon/DIM, ``cortex_DIM/nn_modules/mi_networks.py``):
1x1 -> BN -> ReLU -> 1x1 plus a linear 1x1 shortcut (initialised near the identity when it can be), then
LayerNorm over channels. The global projection is GAP -> Linear -> BN -> ReLU -> Linear to K * C_f.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.nets.input_adapter import InputAdapter
from training.nets.resnet import ResNet

BLOCK_NAMES = ("A", "B", "C", "D")  # ResNet stages layer1..layer4; with the cifar stem at strides 1, 2, 4, 8


class LocalProjection(nn.Module):
    """DIM ``MI1x1ConvNet``-style head: (B, C_in, U, V) -> (B, C_f, U, V), LayerNorm'ed over channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.nonlinear = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.LayerNorm(out_channels)
        if out_channels >= in_channels:  # as DIM: small uniform weights with ones on the diagonal
            with torch.no_grad():
                self.shortcut.weight.uniform_(-0.01, 0.01)
                idx = torch.arange(in_channels)
                self.shortcut.weight[idx, idx, 0, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, U, V)
        h = self.nonlinear(x) + self.shortcut(x)  # (B, C_f, U, V)
        return self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GlobalProjection(nn.Module):
    """(B, C_in, h, w) -> K global features (B, K, C_f): global average pool, then a one-hidden-layer MLP."""

    def __init__(self, in_channels: int, n_clusters: int, out_channels: int, hidden: int = 1024):
        super().__init__()
        self.n_clusters = n_clusters
        self.out_channels = out_channels
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, n_clusters * out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, h, w)
        pooled = x.mean(dim=(2, 3))  # (B, C_in)
        return self.mlp(pooled).unflatten(1, (self.n_clusters, self.out_channels))  # (B, K, C_f)


class Temperature(nn.Module):
    """The softmax scale tau, stored as log tau: a parameter when learnable, else a buffer (so it is checkpointed)."""

    def __init__(self, tau: float, learnable: bool):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        log_tau = torch.tensor(math.log(tau), dtype=torch.float32)
        if learnable:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    def forward(self) -> torch.Tensor:
        return self.log_tau.exp()


def cluster_logits(local: torch.Tensor, globals_: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """tau <L_b(p), H_b[k]>: local (B, C, P), globals_ (B, K, C) -> (B, K, P)."""
    return tau * torch.einsum("bcp,bkc->bkp", local, globals_)


def class_assignment(local: torch.Tensor, globals_: torch.Tensor, tau: torch.Tensor,
                     detach: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoSeg's two steps: probabilities V (B, K, P) = softmax_k(tau <L, H_k>) and assigned S (B, C, P) = V^T H.

    local: (B, C, P); globals_: (B, K, C). With ``detach`` (the default two-step reading, docs/METHODS.md §4.2) V is
    computed without a graph, so gradients reach L and H only through S = sum_k V_k H_k and the critic, never
    through V; ``detach=False`` back-propagates through V as well (the ``no_detach`` option).
    """
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
        probs = cluster_logits(local, globals_, tau).softmax(dim=1)  # (B, K, P)
    assigned = torch.einsum("bkp,bkc->bcp", probs, globals_)  # (B, C, P)
    return probs, assigned


class InfoSegNet(nn.Module):
    """InputAdapter -> ResNet (cifar stem) -> L from ``local_block``, H from ``global_block``.

    ``forward`` is the inference net: (B, C, H, W) in [0, 1] -> cluster probabilities (B, K, H, W), V bilinearly
    upsampled to the input size (§4.3, prediction; bilinear weights sum to 1, so the output still sums to
    1 over K). Only the stages up to the deeper of the two blocks are built.
    """

    def __init__(self, *, in_channels: int, n_clusters: int, adapter: InputAdapter | None = None, width: int = 64,
                 blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2),
                 local_block: str = "C", global_block: str = "D", feature_dim: int = 256,
                 global_hidden: int = 1024, tau: float = 1 / 16, learn_tau: bool = False,
                 backbone: nn.Module | None = None):
        """``backbone`` (a dense trunk, not in the paper) replaces the ResNet encoder: L and H both come from its
        stride-4 map (``local_block`` / ``global_block`` are then unused)."""
        super().__init__()
        adapter = adapter or InputAdapter((0.0,) * in_channels, (1.0,) * in_channels)
        if adapter.in_channels != in_channels:
            raise ValueError(f"the input adapter takes {adapter.in_channels} channels, the net {in_channels}")
        self.adapter = adapter
        self.backbone = backbone
        if backbone is not None:
            local_in = global_in = backbone.out_channels
            self.local_index = self.global_index = 0
            self.n_stages = 0
        else:
            self.local_index = BLOCK_NAMES.index(local_block)
            self.global_index = BLOCK_NAMES.index(global_block)
            self.n_stages = max(self.local_index, self.global_index) + 1
            widths = tuple(width * 2**i for i in range(4))
            self.encoder = ResNet(tuple(blocks_per_stage[:self.n_stages]), in_channels=self.adapter.out_channels,
                                  widths=widths[:self.n_stages], stem="cifar")
            local_in, global_in = widths[self.local_index], widths[self.global_index]
        self.local_proj = LocalProjection(local_in, feature_dim)
        self.global_proj = GlobalProjection(global_in, n_clusters, feature_dim, global_hidden)
        self.tau = Temperature(tau, learn_tau)

    @property
    def stride(self) -> int:
        """Stride of the deepest stage built (8 for block D): the grid every stage tiles exactly."""
        if self.backbone is not None:
            return self.backbone.stride
        return 2 ** (self.n_stages - 1)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Adapter, stem and the built stages: the outputs of blocks A.. (at strides 1, 2, 4, 8); on a backbone,
        its one stride-4 map."""
        if self.backbone is not None:
            return [self.backbone(self.adapter(x))]
        enc = self.encoder
        x = enc.maxpool(enc.relu(enc.bn1(enc.conv1(self.adapter(x)))))
        feats = []
        for i in range(self.n_stages):
            x = getattr(enc, f"layer{i + 1}")(x)
            feats.append(x)
        return feats

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) in [0, 1] -> local L (B, C_f, U, V) and K global features H (B, K, C_f)."""
        feats = self.stages(x)
        return self.local_proj(feats[self.local_index]), self.global_proj(feats[self.global_index])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1]
        local, globals_ = self.features(x)  # (B, C_f, U, V), (B, K, C_f)
        probs = cluster_logits(local.flatten(2), globals_, self.tau()).softmax(dim=1)  # (B, K, U*V)
        probs = probs.unflatten(2, local.shape[2:])  # (B, K, U, V)
        return F.interpolate(probs, size=x.shape[2:], mode="bilinear", align_corners=False)  # (B, K, H, W)
