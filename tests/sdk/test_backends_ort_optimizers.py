"""onnxruntime CPU sessions run without QDQ propagation: the transform is really off, and outputs do not change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from usseg_sdk.backends import ort as ort_backend
from usseg_sdk.config import SegmenterConfig


def _qdq_model(path: Path) -> Path:
    """x (1, 4, 16, 16) -> float Conv -> Relu -> MaxPool -> Q/DQ (uint8) -> Conv with int8 Q/DQ weights -> y: the
    shape int8 export gives ResNet's stem when its first conv stays float."""
    rng = np.random.default_rng(0)
    w_int8 = rng.integers(-127, 128, (6, 8, 3, 3), dtype=np.int8)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.float32(0.02), "a_scale"), numpy_helper.from_array(np.uint8(0), "a_zp"),
             numpy_helper.from_array(w_int8, "w2_q"), numpy_helper.from_array(np.float32(0.01), "w_scale"),
             numpy_helper.from_array(np.int8(0), "w_zp")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["p1", "a_scale", "a_zp"], ["p1_q"], name="q"),
             helper.make_node("DequantizeLinear", ["p1_q", "a_scale", "a_zp"], ["p1_dq"], name="dq"),
             helper.make_node("DequantizeLinear", ["w2_q", "w_scale", "w_zp"], ["w2"], name="w_dq"),
             helper.make_node("Conv", ["p1_dq", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def _pool_input_type(path: Path, disabled: list[str], tmp_path: Path) -> str:
    """The element type MaxPool reads in onnxruntime's optimised graph (default level, as the SDK's sessions)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"opt{len(disabled)}.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    optimized = onnx.load(options.optimized_model_filepath)
    pool = next(n for n in optimized.graph.node if n.op_type == "MaxPool")
    producer = next(n for n in optimized.graph.node if pool.input[0] in n.output)
    return "uint8" if producer.op_type == "QuantizeLinear" else "float"


def test_cpu_sessions_disable_qdq_propagation_and_it_is_effective(tmp_path):
    path = _qdq_model(tmp_path / "qdq.onnx")
    disabled = ort_backend.disabled_optimizers([(ort_backend.CPU, {})])
    assert disabled == ["QDQPropagationTransformer"]
    assert _pool_input_type(path, [], tmp_path) == "uint8"  # onnxruntime's default moves the Q above the pool
    assert _pool_input_type(path, disabled, tmp_path) == "float"


def test_outputs_do_not_change(tmp_path):
    path = _qdq_model(tmp_path / "qdq.onnx")
    x = np.random.default_rng(1).normal(0, 1, (1, 4, 16, 16)).astype(np.float32)
    backend = ort_backend.OnnxRuntimeBackend(path, "cpu", SegmenterConfig(device="cpu"))
    assert backend.describe()["disabled_optimizers"] == ["QDQPropagationTransformer"]
    got = backend.run({"x": x}, ["y"])["y"]
    default = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, default, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("first", [ort_backend.CUDA, ort_backend.TENSORRT])
def test_gpu_sessions_keep_every_optimizer(first):
    assert ort_backend.disabled_optimizers([(first, {}), (ort_backend.CPU, {})]) == []
