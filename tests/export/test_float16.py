"""The float16 ONNX pass (TensorRT 11's fp16 path and ``--precision fp16``): types, kept-float parts, accuracy."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import onnx_export
from export.errors import ExportError
from export.float16 import convert_to_float16
from usseg_sdk.meta import MAPPING_INITIALIZER, SCORES_INITIALIZER


def _graph(k: int = 3) -> onnx.ModelProto:
    """uint8 image -> /255 -> conv -> L2 normalise (ReduceL2) -> Resize x2 -> Softmax -> contract tail."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(255.0, np.float32), "c255"),
             numpy_helper.from_array(rng.normal(0, 1, (k, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array(4.0, np.float32), "temperature"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("Cast", ["image"], ["x"], name="cast_in", to=TensorProto.FLOAT),
             helper.make_node("Div", ["x", "c255"], ["x01"], name="div"),
             helper.make_node("Conv", ["x01", "w"], ["f"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceL2", ["f", "axes"], ["norm"], name="l2", keepdims=1),
             helper.make_node("Div", ["f", "norm"], ["fn"], name="normalise"),
             helper.make_node("Mul", ["fn", "temperature"], ["logits"], name="scale"),
             helper.make_node("Resize", ["logits", "", "scales"], ["up"], name="resize", mode="linear"),
             helper.make_node("Softmax", ["up"], [onnx_export.PROBS_NAME], name="softmax", axis=1)]
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 1, "height", "width"])
    probs = helper.make_tensor_value_info(onnx_export.PROBS_NAME, TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [image], [probs], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return onnx_export.append_contract_tail(model, [0, 1, 1][:k], 2, scores=True)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["clusters", "labels", "scores"], {"image": x})


def test_float16_keeps_io_types_and_the_contract_initializers():
    model = _graph()
    half = convert_to_float16(model)
    onnx.checker.check_model(half, full_check=True)
    g = half.graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert {o.name: o.type.tensor_type.elem_type for o in g.output} == {
        "clusters": TensorProto.UINT8, "labels": TensorProto.UINT8, "scores": TensorProto.FLOAT}
    inits = {i.name: i.data_type for i in g.initializer}
    assert inits["w"] == TensorProto.FLOAT16 and inits["temperature"] == TensorProto.FLOAT16
    assert inits["scales"] == TensorProto.FLOAT  # Resize scales: float32 by the ONNX spec
    assert inits[SCORES_INITIALIZER] == TensorProto.FLOAT and inits[MAPPING_INITIALIZER] == TensorProto.INT64
    types = {v.name: v.type.tensor_type.elem_type for v in g.value_info}
    assert types["f"] == TensorProto.FLOAT16 and types["up"] == TensorProto.FLOAT16
    assert types["norm"] == TensorProto.FLOAT  # ReduceL2 stays float32 (sums of squares overflow fp16)
    first_cast = next(n for n in g.node if n.name == "cast_in")
    assert first_cast.attribute[0].i == TensorProto.FLOAT16


def test_float16_outputs_match_float32():
    model = _graph()
    x = np.random.default_rng(1).integers(0, 256, (2, 1, 12, 10), dtype=np.uint8)
    c32, _, s32 = _run(model, x)
    c16, _, s16 = _run(convert_to_float16(model), x)
    assert s16.dtype == np.float32
    np.testing.assert_allclose(s16, s32, atol=5e-3)
    assert (c16 == c32).mean() > 0.97  # only near-ties may flip


def test_float16_rejects_control_flow():
    model = _graph()
    branch = helper.make_graph([helper.make_node("Identity", ["c255"], ["y"])], "b", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))
    with pytest.raises(ExportError):
        convert_to_float16(model)
