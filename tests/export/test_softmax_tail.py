"""The cheaper softmax tail: channel-softmax decomposition, ArgMax on the logits, no Softmax without scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export import onnx_export
from export.channel_softmax import decompose_channel_softmax
from export.errors import ExportError
from export.graph import build_inference_graph
from export.verify import with_probs_output
from tests.export.tiny_methods import TinySeg, train_steps


def _softmax_model(axis: int, opset: int = 18) -> onnx.ModelProto:
    """x (2, 5, 3, 4) float -> Softmax(axis) -> y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 3, 4])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=axis)], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


@pytest.mark.parametrize("axis", [1, -3, 0, 2])
def test_decomposed_softmax_equals_softmax(axis):
    model = _softmax_model(axis)
    x = np.random.default_rng(0).normal(0, 4, (2, 5, 3, 4)).astype(np.float32)
    (expected,) = _run(model, {"x": x}, ["y"])
    assert decompose_channel_softmax(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert "Softmax" not in onnx_export.node_counts(model)
    assert model.graph.node[-1].name == "sm" and model.graph.node[-1].output[0] == "y"
    (got,) = _run(model, {"x": x}, ["y"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    torch_ref = torch.softmax(torch.from_numpy(x), dim=axis).numpy()
    np.testing.assert_allclose(got, torch_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("axis, opset", [(-1, 18), (3, 18), (1, 13)])
def test_last_axis_and_old_opsets_are_left_alone(axis, opset):
    model = _softmax_model(axis, opset)
    assert decompose_channel_softmax(model) == 0
    assert onnx_export.node_counts(model) == {"Softmax": 1}


@pytest.fixture(scope="module")
def tiny_export():
    """TinySeg (its probabilities: a Softmax over clusters) exported with a contract tail, with and without
    scores, its torch graph and a test input."""
    torch.manual_seed(0)
    method = TinySeg()
    train_steps(method, torch.rand(4, 1, 16, 16))
    example = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    graph, _ = build_inference_graph(method.inference_net(), example)
    exported = onnx_export.export_graph(graph, example, dynamic=True).model
    models = {}
    for scores in (False, True):
        model = onnx.ModelProto()
        model.CopyFrom(exported)
        assert onnx_export.softmax_logits(model) is not None
        models[scores] = onnx_export.append_contract_tail(model, [1, 0, 2, 2], 3, scores=scores)
    x = torch.randint(0, 256, (3, 1, 20, 12), dtype=torch.uint8)
    with torch.no_grad():
        probs = graph(x).numpy()  # (B, K, H, W)
    return models, x.numpy(), probs


def test_without_scores_the_argmax_reads_the_logits_and_the_softmax_is_gone(tiny_export):
    models, x, probs = tiny_export
    model = models[False]
    onnx.checker.check_model(model, full_check=True)
    assert "Softmax" not in onnx_export.node_counts(model)
    assert not any(onnx_export.PROBS_NAME in n.output for n in model.graph.node)
    argmax = next(n for n in model.graph.node if n.name == onnx_export.TAIL_PREFIX + "argmax")
    assert argmax.input[0] != onnx_export.PROBS_NAME
    clusters, labels = _run(model, {"image": x}, ["clusters", "labels"])
    np.testing.assert_array_equal(clusters, probs.argmax(1))
    np.testing.assert_array_equal(labels, np.asarray([1, 0, 2, 2])[probs.argmax(1)])


def test_with_scores_the_softmax_stays_and_the_labels_agree(tiny_export):
    models, x, probs = tiny_export
    model = models[True]
    assert any(onnx_export.PROBS_NAME in n.output for n in model.graph.node)
    clusters, scores = _run(model, {"image": x}, ["clusters", "scores"])
    np.testing.assert_array_equal(clusters, probs.argmax(1))
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("scores", [False, True])
def test_probe_gives_the_probabilities_of_both_graphs(tiny_export, tmp_path: Path, scores):
    models, x, probs = tiny_export
    path = tmp_path / "model.onnx"
    onnx.save(models[scores], str(path))
    probe = onnx.load(str(with_probs_output(path, tmp_path)))
    (got,) = _run(probe, {"image": x}, [onnx_export.PROBS_NAME])
    np.testing.assert_allclose(got, probs, atol=1e-5)


def test_probe_rejects_a_graph_without_probabilities_or_tail(tmp_path: Path):
    model = _softmax_model(1)
    model.graph.node[0].output[0] = "y"
    path = tmp_path / "other.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ExportError, match="usseg_probs"):
        with_probs_output(path, tmp_path)
