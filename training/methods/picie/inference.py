"""PiCIE's inference graph: InputAdapter -> ResNet-18 FPN -> L2 normalise -> centroid classifier -> upsample ->
softmax (official ``commons.py::evaluate`` L186-241: 1x1 conv whose weight is the centroids, bilinear upsampling
of the logits, align_corners=False)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses.picie import cluster_logits, normalize_features
from training.nets.input_adapter import InputAdapter


class CentroidClassifier(nn.Module):
    """Frozen 1x1 conv with the k-means centroids as weight: (B, D, h, w) unit features -> (B, K, h, w) logits.

    ``distance_bias=False`` is the official bias 0 (dot products); True adds -||c||^2/2 so that the argmax is the
    nearest centroid (see ``training.losses.picie``). ``centroids`` is shared with the method (same tensor)."""

    def __init__(self, centroids: torch.Tensor, distance_bias: bool):
        super().__init__()
        self.register_buffer("centroids", centroids)
        self.distance_bias = distance_bias

    def forward(self, feats_n: torch.Tensor) -> torch.Tensor:
        return cluster_logits(feats_n, self.centroids, self.distance_bias)


class PiCIEInferenceNet(nn.Module):
    """float32 (B, C, H, W) in [0, 1] -> cluster probabilities (B, K, H, W) at the input resolution."""

    def __init__(self, adapter: InputAdapter, net: nn.Module, classifier: CentroidClassifier):
        super().__init__()
        self.adapter = adapter
        self.net = net
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(normalize_features(self.net(self.adapter(x))))  # (B, K, h, w)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)  # (B, K, H, W)
