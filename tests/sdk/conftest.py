"""Session-wide tiny ONNX models for the runtime tests (see tests/sdk/onnx_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> model.onnx path (each in its own export directory with a model.json sidecar)."""
    pytest.importorskip("onnxruntime")
    onnx_models = pytest.importorskip("tests.sdk.onnx_models", reason="needs the onnx package")
    root = tmp_path_factory.mktemp("models")
    specs = {
        # grey, 4 clusters mapped to 3 classes, with scores
        "grey": dict(n_clusters=4, cluster_to_class=[0, 1, 1, 2], scores=True),
        # RGB, cluster = brightest of R, G, B (tells which channel the model saw)
        "rgb_argmax": dict(kind="channel_argmax", channels=3, color_order="rgb", n_clusters=3),
        "bgr_argmax": dict(kind="channel_argmax", channels=3, color_order="bgr", n_clusters=3),
        "rgbi_argmax": dict(kind="channel_argmax", channels=4, color_order="rgbi", n_clusters=4),
        # RGB conv net with stride 4 (pool/upsample): needs padding to a multiple of 4
        "rgb_stride4": dict(channels=3, color_order="rgb", n_clusters=3, stride=4, scores=True),
        # no labels output: the runtime maps clusters through meta.cluster_to_class
        "clusters_only": dict(n_clusters=4, cluster_to_class=[0, 2, 1, 2], labels_output=False),
        # static 32x48 input and batch 1 (a non-dynamic export)
        "static": dict(n_clusters=3, static_hw=(32, 48), static_batch=1),
        # tiling defaults in the metadata
        "tiled_meta": dict(n_clusters=3, tile_size=(40, 64), overlap=8),
    }
    return {name: onnx_models.build_model(root / name / "model.onnx", **spec)[0] for name, spec in specs.items()}
