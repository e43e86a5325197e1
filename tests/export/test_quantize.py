"""INT8 static QDQ quantization: which nodes stay float, that weights really become int8, that it still runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import onnx_export
from export.errors import ExportError
from export.graph import build_inference_graph
from export.quantize import Int8Options, float_nodes, quantize_int8
from tests.export.tiny_methods import TinySeg, train_steps
from usseg_sdk.meta import MAPPING_INITIALIZER


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    torch.manual_seed(0)
    method = TinySeg()
    train_steps(method, torch.rand(4, 1, 24, 24))
    example = torch.randint(0, 256, (2, 1, 24, 24), dtype=torch.uint8)
    graph, _ = build_inference_graph(method.inference_net(), example)
    model = onnx_export.export_graph(graph, example, dynamic=True).model
    model = onnx_export.append_contract_tail(model, [0, 1, 2, 3], 4, scores=True)
    path = tmp_path_factory.mktemp("int8") / "fp32.onnx"
    onnx_export.save_model(model, path)
    return path


def _batches(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (1, 1, 24, 24), dtype=np.uint8) for _ in range(n)]


def test_float_nodes_keep_tail_softmax_and_first_last_layers(fp32_model):
    model = onnx.load(str(fp32_model))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    both = set(float_nodes(model, ("first", "last")))
    none = set(float_nodes(model, ()))
    assert {n.name for n in model.graph.node if n.name.startswith(onnx_export.TAIL_PREFIX)} <= none
    assert any(n.op_type == "Softmax" and n.name in none for n in model.graph.node)
    assert convs[0] in both and convs[-1] in both
    assert convs[0] not in none and convs[-1] not in none


@pytest.mark.parametrize("float_layers", [("first", "last"), ()])
def test_quantize_int8_makes_int8_weights_and_keeps_the_contract(fp32_model, tmp_path, float_layers):
    out = tmp_path / "int8.onnx"
    result = quantize_int8(fp32_model, out, _batches(), Int8Options(float_layers=float_layers))
    model = onnx.load(str(out))
    ops = onnx_export.node_counts(model)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    n_convs = onnx_export.node_counts(onnx.load(str(fp32_model)))["Conv"]
    assert result.quantized_nodes == n_convs - (2 if float_layers else 0)
    inits = {i.name: i for i in model.graph.initializer}
    assert inits[MAPPING_INITIALIZER].data_type == onnx.TensorProto.INT64
    x = _batches(1)[0]
    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["clusters", "scores"],
                                                                                      {"image": x})

    (c32, _), (c8, s8) = run(fp32_model), run(out)
    assert s8.dtype == np.float32 and (c8 == c32).mean() > 0.8


def test_quantize_rejects_bad_options(fp32_model, tmp_path):
    with pytest.raises(ExportError, match="float-layers"):
        quantize_int8(fp32_model, tmp_path / "x.onnx", _batches(1), Int8Options(float_layers=("middle",)))
    with pytest.raises(ExportError, match="at least one frame"):
        quantize_int8(fp32_model, tmp_path / "x.onnx", [], Int8Options())


def test_activation_products_stay_float():
    """Attention's QK^T (two activations) stays float; a MatMul with a constant weight is quantized."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["q"], name="project"),
             helper.make_node("MatMul", ["q", "x"], ["qk"], name="qk"),
             helper.make_node("Conv", ["qk", "k"], ["y"], name="head")]
    k = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "k")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w, k])
    kept = set(float_nodes(helper.make_model(graph), ()))
    assert "qk" in kept and "project" not in kept
