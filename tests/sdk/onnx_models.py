"""Tiny ONNX models that follow docs/ARCHITECTURE.md "The exported graph", built with onnx.helper (no torch).

``image`` uint8 (B, C, H, W) with symbolic batch/height/width -> Cast, /255 -> a few stride-1 'same' convs
(translation-equivariant, receptive-field radius 2) -> Softmax -> ArgMax -> ``clusters`` uint8; Gather on the
int64 initializer ``usseg_cluster_to_class`` -> ``labels`` uint8; optional ``scores`` = Einsum with the float32
initializer ``usseg_class_from_cluster``. ModelMeta goes into ``metadata_props`` and a ``model.json`` sidecar.

``kind="channel_argmax"``: cluster = index of the brightest input channel (1x1 identity conv), so a test can
tell which channel the model saw. ``stride=4``: average-pool by 4, convs, nearest upsample by 4 — outputs have
the input's size only when H and W are multiples of 4, so the runtime's padding is what makes it work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from usseg_sdk.meta import (
    MAPPING_INITIALIZER,
    METADATA_KEY,
    SCORES_INITIALIZER,
    ClassInfo,
    InputSpec,
    MappingInfo,
    ModelMeta,
    TilingSpec,
    default_palette,
)

OPSET = 17
RF_RADIUS = {1: 2, 4: 4 * 2 + 3}  # receptive-field radius in input pixels of the "conv" kind, per stride


def make_meta(*, channels: int = 1, color_order: str = "gray", n_clusters: int = 4, stride: int = 1,
              scores: bool = False, labels_output: bool = True, cluster_to_class: list[int] | None = None,
              class_names: list[str] | None = None, tile_size: tuple[int, int] | None = None, overlap: int = 0,
              min_size: int = 1, **updates: Any) -> ModelMeta:
    mapping = cluster_to_class if cluster_to_class is not None else list(range(n_clusters))
    n_classes = max(mapping) + 1 if class_names is None else len(class_names)
    names = class_names or ["background"] + [f"defect_{i}" for i in range(1, n_classes)]
    classes = [ClassInfo(name=n, color=c, defect=i != 0)
               for i, (n, c) in enumerate(zip(names, default_palette(n_classes), strict=True))]
    spec = InputSpec(channels=channels, color_order=color_order, mean=(0.5,) * channels, std=(0.25,) * channels,
                     stride=stride, min_size=min_size)
    outputs = {"clusters": "clusters", "labels": "labels" if labels_output else None,
               "scores": "scores" if scores else None}
    return ModelMeta(method="test", n_clusters=n_clusters, classes=classes, cluster_to_class=mapping,
                     mapping=MappingInfo(kind="identity"), input=spec, outputs=outputs,
                     tiling=TilingSpec(tile_size=tile_size, overlap=overlap), **updates)


def build_graph(meta: ModelMeta, *, kind: str = "conv", seed: int = 0, static_hw: tuple[int, int] | None = None,
                static_batch: int | None = None, hidden: int = 8) -> onnx.ModelProto:
    c, k, stride = meta.input.channels, meta.n_clusters, meta.input.stride
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes = [helper.make_node("Cast", ["image"], ["x_f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["x_f", "c255"], ["x01"])]
    inits.append(numpy_helper.from_array(np.array(255.0, np.float32), "c255"))
    if kind == "channel_argmax":
        assert k == c, "channel_argmax needs one cluster per channel"
        inits.append(numpy_helper.from_array((np.eye(c, dtype=np.float32) * 20.0).reshape(c, c, 1, 1), "w_id"))
        nodes.append(helper.make_node("Conv", ["x01", "w_id"], ["logits"]))
    else:
        x = "x01"
        if stride > 1:
            nodes.append(helper.make_node("AveragePool", [x], ["x_low"], kernel_shape=[stride, stride],
                                          strides=[stride, stride]))
            x = "x_low"
        w1 = rng.normal(0, 1.0, (hidden, c, 3, 3)).astype(np.float32)
        b1 = rng.normal(0, 0.3, hidden).astype(np.float32)
        w2 = rng.normal(0, 0.7, (k, hidden, 3, 3)).astype(np.float32)
        b2 = rng.normal(0, 0.3, k).astype(np.float32)
        inits += [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
        nodes += [helper.make_node("Conv", [x, "w1", "b1"], ["h1"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["h1"], ["h1r"]),
                  helper.make_node("Conv", ["h1r", "w2", "b2"], ["logits_low" if stride > 1 else "logits"],
                                   pads=[1, 1, 1, 1])]
        if stride > 1:
            inits.append(numpy_helper.from_array(np.array([1, 1, stride, stride], np.float32), "up_scales"))
            nodes.append(helper.make_node("Resize", ["logits_low", "", "up_scales"], ["logits"], mode="nearest"))
    nodes += [helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
              helper.make_node("ArgMax", ["probs"], ["idx"], axis=1, keepdims=0),
              helper.make_node("Cast", ["idx"], ["clusters"], to=TensorProto.UINT8)]
    inits.append(numpy_helper.from_array(np.asarray(meta.cluster_to_class, np.int64), MAPPING_INITIALIZER))
    outputs = [_out("clusters", TensorProto.UINT8, 3)]
    nodes += [helper.make_node("Gather", [MAPPING_INITIALIZER, "idx"], ["label_idx"], axis=0),
              helper.make_node("Cast", ["label_idx"], ["labels"], to=TensorProto.UINT8)]
    if meta.outputs.labels is not None:
        outputs.append(_out("labels", TensorProto.UINT8, 3))
    if meta.outputs.scores is not None:
        onehot = np.zeros((meta.n_classes, k), np.float32)
        onehot[meta.cluster_to_class, np.arange(k)] = 1.0
        inits.append(numpy_helper.from_array(onehot, SCORES_INITIALIZER))
        nodes.append(helper.make_node("Einsum", [SCORES_INITIALIZER, "probs"], ["scores"], equation="ck,bkhw->bchw"))
        outputs.append(_out("scores", TensorProto.FLOAT, 4))
    hw = list(static_hw) if static_hw is not None else ["height", "width"]
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, [static_batch or "batch", c, *hw])
    graph = helper.make_graph(nodes, "usseg_test", [image], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _out(name: str, dtype: int, rank: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, [None] * rank)


def save_model(model: onnx.ModelProto, meta: ModelMeta | None, path: Path, *, embed: bool = True,
               sidecar: bool = True, raw_meta: dict | None = None) -> Path:
    """Write ``path`` (ONNX) with the meta embedded and/or as ``model.json`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    del model.metadata_props[:]
    text = json.dumps(raw_meta) if raw_meta is not None else (meta.to_json(indent=None) if meta else None)
    if embed and text is not None:
        model.metadata_props.add(key=METADATA_KEY, value=text)
    onnx.save(model, str(path))
    if sidecar and meta is not None:
        meta.save(path.with_name("model.json"))
    return path


def build_model(path: Path, *, kind: str = "conv", seed: int = 0, static_hw: tuple[int, int] | None = None,
                static_batch: int | None = None, **meta_fields: Any) -> tuple[Path, ModelMeta]:
    """Build, save and return (path, meta) for a test model; ``meta_fields`` go to :func:`make_meta`."""
    meta = make_meta(**meta_fields)
    model = build_graph(meta, kind=kind, seed=seed, static_hw=static_hw, static_batch=static_batch)
    return save_model(model, meta, path), meta
