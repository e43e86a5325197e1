"""torch -> ONNX: the exported graph follows docs/ARCHITECTURE.md "The exported graph" exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from export import onnx_export
from export.errors import ExportError
from export.graph import build_inference_graph
from tests.export.tiny_methods import TinySeg, train_steps
from usseg_sdk.meta import MAPPING_INITIALIZER, SCORES_INITIALIZER, InputSpec, ModelMeta, OutputSpec


@pytest.fixture(scope="module")
def tiny_graph():
    torch.manual_seed(0)
    method = TinySeg()
    train_steps(method, torch.rand(4, 1, 16, 16))
    example = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    graph, _ = build_inference_graph(method.inference_net(), example)
    return graph, example


def _meta(k: int = 4, scores: bool = True, mapping: list[int] | None = None) -> ModelMeta:
    meta = ModelMeta.uncalibrated(method="tiny_seg", n_clusters=k, input=InputSpec(
        channels=1, color_order="gray", mean=(0.4,), std=(0.2,), stride=1),
        outputs=OutputSpec(scores="scores" if scores else None))
    if mapping is not None:
        meta = meta.model_copy(update={"cluster_to_class": mapping})
    return meta


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_contract_graph_runs_and_matches_torch(tiny_graph, exporter):
    graph, example = tiny_graph
    exported = onnx_export.export_graph(graph, example, dynamic=True, exporter=exporter, min_size=4)
    assert exported.exporter.startswith(f"torch.onnx {exporter}")
    mapping = [2, 0, 1, 1]
    model = onnx_export.append_contract_tail(exported.model, mapping, 3, scores=True)
    meta = ModelMeta.uncalibrated(method="tiny_seg", n_clusters=4, input=_meta().input,
                                  outputs=OutputSpec(scores="scores"))
    meta = meta.model_copy(update={"classes": meta.classes[:3], "cluster_to_class": mapping})
    onnx_export.set_metadata(model, meta)
    onnx_export.check_contract(model, meta)
    g = model.graph
    dims = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    assert g.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert "BatchNormalization" not in onnx_export.node_counts(model)
    gather = next(n for n in g.node if n.op_type == "Gather")
    assert gather.input[0] == MAPPING_INITIALIZER
    einsum = next(n for n in g.node if n.output[0] == "scores")
    assert einsum.op_type == "Einsum" and einsum.input[0] == SCORES_INITIALIZER
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randint(0, 256, (3, 1, 20, 12), dtype=torch.uint8)  # another batch and size than the example
    clusters, labels, scores = session.run(["clusters", "labels", "scores"], {"image": x.numpy()})
    with torch.no_grad():
        probs = graph(x).numpy()
    assert clusters.dtype == np.uint8 and labels.dtype == np.uint8 and scores.dtype == np.float32
    np.testing.assert_array_equal(clusters, probs.argmax(1))
    np.testing.assert_array_equal(labels, np.asarray(mapping)[probs.argmax(1)])
    expected = np.stack([probs[:, [k for k, c in enumerate(mapping) if c == cls]].sum(1) for cls in range(3)], 1)
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_static_export_keeps_the_example_shape(tiny_graph):
    graph, example = tiny_graph
    exported = onnx_export.export_graph(graph, example[:1], dynamic=False)
    dims = [d.dim_value for d in exported.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 16, 16]


def test_auto_falls_back_to_torchscript_and_records_why(tiny_graph, monkeypatch):
    graph, example = tiny_graph

    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    exported = onnx_export.export_graph(graph, example, dynamic=True)
    assert exported.exporter.startswith("torch.onnx torchscript")
    assert "simulated dynamo failure" in exported.exporter
    with pytest.raises(ExportError, match="dynamo ONNX exporter failed"):
        onnx_export.export_graph(graph, example, dynamic=True, exporter="dynamo")


def test_dynamic_export_needs_a_batch_of_two(tiny_graph):
    graph, example = tiny_graph
    with pytest.raises(ExportError, match="batch of at least 2"):
        onnx_export.export_graph(graph, example[:1], dynamic=True)


def test_check_contract_names_what_is_wrong(tiny_graph):
    graph, example = tiny_graph
    model = onnx_export.export_graph(graph, example[:1], dynamic=False).model
    model = onnx_export.append_contract_tail(model, [0, 1, 2, 3], 4, scores=False)
    meta = _meta(scores=False)
    onnx_export.set_metadata(model, meta)
    onnx_export.check_contract(model, meta)
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    for init in broken.graph.initializer:
        if init.name == MAPPING_INITIALIZER:
            init.CopyFrom(numpy_helper.from_array(np.array([0, 1, 2, 3], np.int32), MAPPING_INITIALIZER))
    with pytest.raises(ExportError, match=MAPPING_INITIALIZER):
        onnx_export.check_contract(broken, meta)
    with pytest.raises(ExportError, match="outputs"):
        onnx_export.check_contract(model, _meta(scores=True))
    with pytest.raises(ExportError, match=r"usseg\.meta"):
        onnx_export.check_contract(model, meta.model_copy(update={"method": "other"}))
