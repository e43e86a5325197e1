"""Channel-contraction Einsum with a constant matrix -> 1x1 Conv: same values; other Einsums untouched; PiCIE's
classifier exports as a Conv and still verifies."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export import onnx_export
from export.einsum_conv import einsum_to_conv
from export.pipeline import ExportOptions, export_method
from training.methods.base import build_method


def _einsum_model(equation: str, weight: np.ndarray, x_shape: list[int]) -> onnx.ModelProto:
    elem = TensorProto.FLOAT16 if weight.dtype == np.float16 else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Einsum", ["x", "w"], ["y"], name="classifier", equation=equation)], "g",
        [helper.make_tensor_value_info("x", elem, x_shape)], [helper.make_tensor_value_info("y", elem, None)],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


@pytest.mark.parametrize("equation", ["bdhw,kd->bkhw", "n c y x , k c -> n k y x"])
def test_channel_contraction_becomes_a_1x1_conv_with_the_same_values(equation):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(5, 7)).astype(np.float32)  # (K, D)
    x = rng.normal(size=(2, 7, 6, 9)).astype(np.float32)  # (B, D, H, W)
    model = _einsum_model(equation, weight, [2, 7, 6, 9])
    expected = _run(model, x)
    assert einsum_to_conv(model) == 1
    assert onnx_export.node_counts(model) == {"Conv": 1} and model.graph.node[0].name == "classifier"
    assert [i.name for i in model.graph.initializer] == ["classifier_conv_weight"]  # the matrix went with it
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(expected, np.einsum("bdhw,kd->bkhw", x, weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation, weight_shape, x_shape", [
    ("bdhw,dk->bkhw", (7, 5), [2, 7, 6, 9]),  # matrix transposed
    ("bdhw,kd->bhwk", (5, 7), [2, 7, 6, 9]),  # output not NCHW
    ("bd,kd->bk", (5, 7), [2, 7]),  # not an image
])
def test_other_einsums_are_left_alone(equation, weight_shape, x_shape):
    model = _einsum_model(equation, np.ones(weight_shape, np.float32), x_shape)
    assert einsum_to_conv(model) == 0
    assert onnx_export.node_counts(model) == {"Einsum": 1}


def test_float16_einsum_is_left_alone():
    model = _einsum_model("bdhw,kd->bkhw", np.ones((5, 7), np.float16), [2, 7, 6, 9])
    assert einsum_to_conv(model) == 0


def test_picie_classifier_exports_as_a_conv_and_verifies(tmp_path):
    torch.manual_seed(0)
    method = build_method("picie", {"backbone_width": 8, "feature_dim": 16, "n_clusters": 4}).eval()
    with torch.no_grad():
        method.centroids.copy_(torch.nn.functional.normalize(torch.randn(4, 16), dim=1))
    result = export_method(method, ExportOptions(out=tmp_path / "export", input_size=(64, 64), verify_count=4))
    model = onnx.load(str(result.out / "model.onnx"))
    counts = onnx_export.node_counts(model)
    assert "Einsum" not in counts and "Softmax" not in counts
    report = json.loads((result.out / "verify.json").read_text())
    assert report["passed"] and report["export"]["einsum_convs"] == 1
    assert report["cluster_agreement"] > 0.999 and report["max_abs_diff_probs"] < 1e-4
