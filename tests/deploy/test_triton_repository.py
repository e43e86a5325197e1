"""The Triton model-repository generator, checked against Triton's own model-config schema (inference.ModelConfig)."""

import importlib.util
import sys

import pytest

from tests.conftest import ROOT
from usseg_sdk.meta import InputSpec, ModelMeta

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402  (comes with tritonclient)
from onnx import TensorProto, helper  # noqa: E402

spec = importlib.util.spec_from_file_location("make_repository", ROOT / "deploy" / "triton" / "make_repository.py")
make_repository_mod = importlib.util.module_from_spec(spec)
sys.modules["make_repository"] = make_repository_mod  # dataclasses look their module up there
spec.loader.exec_module(make_repository_mod)


def write_export(folder, *, dynamic=True):
    """A two-cluster threshold 'net' with the exported-graph contract's inputs, outputs and initializers."""
    b, h, w = ("batch", "height", "width") if dynamic else (1, 16, 16)
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x", "c255"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probs"], axis=1),
        helper.make_node("ArgMax", ["probs"], ["am"], axis=1, keepdims=0),
        helper.make_node("Cast", ["am"], ["clusters"], to=TensorProto.UINT8),
        helper.make_node("Gather", ["usseg_cluster_to_class", "am"], ["lab64"]),
        helper.make_node("Cast", ["lab64"], ["labels"], to=TensorProto.UINT8),
        helper.make_node("Einsum", ["usseg_class_from_cluster", "probs"], ["scores"], equation="ck,bkhw->bchw"),
    ]
    inits = [helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("usseg_cluster_to_class", TensorProto.INT64, [2], [0, 1]),
             helper.make_tensor("usseg_class_from_cluster", TensorProto.FLOAT, [2, 2], [1, 0, 0, 1])]
    graph = helper.make_graph(
        nodes, "threshold", [helper.make_tensor_value_info("image", TensorProto.UINT8, [b, 1, h, w])],
        [helper.make_tensor_value_info("clusters", TensorProto.UINT8, [b, h, w]),
         helper.make_tensor_value_info("labels", TensorProto.UINT8, [b, h, w]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [b, 2, h, w])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = ModelMeta.uncalibrated(method="toy", n_clusters=2, input=InputSpec(
        channels=1, color_order="gray", mean=(0.0,), std=(1.0,)))
    for k, v in meta.to_metadata_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    meta.save(folder / "model.json")
    return folder


def parse(config_path):
    return text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())


def test_onnx_repository_parses_as_triton_model_config(tmp_path):
    export = write_export(tmp_path / "export")
    folder = make_repository_mod.make_repository(export, tmp_path / "repo", name="neu", max_batch_size=8,
                                                 instances=2, kind="cpu")
    assert (folder / "1" / "model.onnx").read_bytes() == (export / "model.onnx").read_bytes()
    assert ModelMeta.load(folder / "model.json").method == "toy"
    cfg = parse(folder / "config.pbtxt")
    assert cfg.name == "neu" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 8
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == [
        ("image", "TYPE_UINT8", [1, -1, -1])]
    outs = {o.name: (model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output}
    assert outs == {"clusters": ("TYPE_UINT8", [-1, -1]), "labels": ("TYPE_UINT8", [-1, -1]),
                    "scores": ("TYPE_FP32", [2, -1, -1])}
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.instance_group[0].count == 2
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_CPU"


def test_plan_and_tensorrt_accelerator_configs(tmp_path):
    export = write_export(tmp_path / "export")
    (export / "model.engine").write_bytes(b"serialized engine")
    plan = make_repository_mod.make_repository(export, tmp_path / "repo", name="trt", kind="gpu",
                                               plan=export / "model.engine")
    cfg = parse(plan / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and (plan / "1" / "model.plan").read_bytes() == b"serialized engine"
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"
    ort = make_repository_mod.make_repository(export, tmp_path / "repo", name="ort_trt", kind="gpu",
                                              ort_tensorrt="fp16")
    acc = parse(ort / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"


def test_static_batch_model_needs_max_batch_size_zero(tmp_path):
    export = write_export(tmp_path / "export", dynamic=False)
    with pytest.raises(SystemExit, match="fixed batch axis"):
        make_repository_mod.make_repository(export, tmp_path / "repo")
    folder = make_repository_mod.make_repository(export, tmp_path / "repo", max_batch_size=0)
    cfg = parse(folder / "config.pbtxt")
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 1, 16, 16]
    assert not cfg.HasField("dynamic_batching")


def test_refuses_incomplete_export_and_plan_on_cpu(tmp_path):
    export = write_export(tmp_path / "export")
    with pytest.raises(SystemExit, match="plan runs on GPU"):
        make_repository_mod.make_repository(export, tmp_path / "repo", plan=export / "model.onnx")
    (export / "model.json").unlink()
    with pytest.raises(SystemExit, match=r"model\.json is missing"):
        make_repository_mod.make_repository(export, tmp_path / "repo")
