"""Small configs of every registered method, so tests that train real methods stay fast on 2 CPU cores.

A method without an entry runs with its defaults (and ``n_clusters: 4``); keys a method does not have are ignored
by the users of this table.
"""

from __future__ import annotations

_KMEANS = {"pixels_per_image": 64, "kmeans_iters": 5, "kmeans_init_batches": 1}
TINY: dict[str, dict] = {
    "iic": {"width": 0.125, "over_clusters": 6, "half_T": 2},
    "ac": {"width": 8, "n_blocks": 2, "attention_after": 1, "half_T": 2},
    "infoseg": {"width": 8, "feature_dim": 16, "global_hidden": 32},
    "picie": {"backbone_width": 8, "feature_dim": 16, "kmeans_init_batches": 1, "kmeans_init_iters": 2,
              "kmeans_pixels_per_image": 64},
    "kmeans": _KMEANS,
    "random_cnn": {**_KMEANS, "feature_dim": 16},
    "stego": {"code_dim": 8, "feature_samples": 4, "neg_samples": 2, "bank_points": 32, "kmeans_iters": 5,
              "over_clusters": 6, "backbone": {"taps": [1, 2]}},
    "anomaly": {"over_clusters": 6, "over_normal_clusters": 2, "bank_size": 64, "coreset_candidates": 2000,
                "kmeans_iters": 5, "seed": 0},
}

# Every method on the pretrained Lite0 trunk, small heads (method_config.backbone; the trunk itself is fixed).
_TRUNK = {"taps": [1, 2], "feature_dim": 16}
BACKBONE_TINY: dict[str, dict] = {
    "iic": {"over_clusters": 6, "half_T": 2, "input": {"sobel": "off"}, "backbone": _TRUNK},
    "ac": {"width": 8, "n_blocks": 2, "attention_after": 1, "half_T": 2, "backbone": _TRUNK},
    "infoseg": {"feature_dim": 16, "global_hidden": 32, "backbone": _TRUNK},
    "picie": {"kmeans_init_batches": 1, "kmeans_init_iters": 2, "kmeans_pixels_per_image": 64,
              "backbone": {**_TRUNK, "fusion": "fpn"}},
    "kmeans": {**_KMEANS, "over_clusters": 12, "seed": 0, "backbone": {}},
    "stego": {"code_dim": 8, "feature_samples": 4, "neg_samples": 2, "bank_points": 32, "kmeans_iters": 5,
              "over_clusters": 6, "jitter_brightness": 0.2, "jitter_contrast": 0.2, "backbone": {"taps": [1, 2]}},
    "anomaly": {**TINY["anomaly"], "backbone": {"taps": [2, 4]}},
}
