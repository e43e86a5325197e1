"""TensorRT export: what runs without TensorRT (shapes, profiles, inspector parsing, sidecar, the missing-package
error, the build's orchestration against a stand-in), and the real build behind the ``trt`` marker."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from export import tensorrt
from export.errors import ExportError, TensorRTUnavailableError
from usseg_sdk.meta import InputSpec, ModelMeta

META = ModelMeta.uncalibrated(method="iic", n_clusters=4, input=InputSpec(
    channels=1, color_order="gray", mean=(0.5,), std=(0.25,), stride=8, min_size=16))

TRT10_INFO = {"Layers": [
    {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "x", "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "y", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
    {"Name": "softmax", "LayerType": "CaskSoftMax",
     "Outputs": [{"Name": "p", "Format/Datatype": "Row major linear FP32"}]}],
    "Bindings": ["image", "clusters"]}
TRT11_INFO = {"Layers": [
    {"Name": "/net/conv", "LayerType": "CaskGemmConvolution",
     "Outputs": [{"Name": "y", "Format": "Row major linear", "DataType": "Float"}]}],
    "I/O Tensors": [{"Name": "image", "IOMode": "Input", "DataType": "UInt8"}]}


def test_parse_shape_forms():
    assert tensorrt.parse_shape("256x1600", 1) == (1, 1, 256, 1600)
    assert tensorrt.parse_shape("4x256x1600", 3) == (4, 3, 256, 1600)
    assert tensorrt.parse_shape("2x3x64x64", 3) == (2, 3, 64, 64)
    with pytest.raises(ExportError, match="channels"):
        tensorrt.parse_shape("2x3x64x64", 1)
    with pytest.raises(ExportError, match="cannot read"):
        tensorrt.parse_shape("big", 1)


def test_profile_from_dynamic_ranges_is_checked():
    p = tensorrt.profile_shapes(META, None, "1x16x16", "2x256x1600", "4x256x1600")
    assert p.min == (1, 1, 16, 16) and p.opt == (2, 1, 256, 1600) and p.max == (4, 1, 256, 1600)
    with pytest.raises(ExportError, match="min <= opt <= max"):
        tensorrt.profile_shapes(META, None, "4x16x16", "2x256x1600", "4x256x1600")
    with pytest.raises(ExportError, match="multiples of the stride 8"):
        tensorrt.profile_shapes(META, None, "1x20x16", "2x256x1600", "4x256x1600")
    with pytest.raises(ExportError, match="--min-shape, --opt-shape and --max-shape"):
        tensorrt.profile_shapes(META, None, None, "2x256x1600", None)


def test_static_graph_gets_its_one_shape_and_rejects_ranges():
    p = tensorrt.profile_shapes(META, (1, 1, 256, 256))
    assert p.min == p.opt == p.max == (1, 1, 256, 256)
    with pytest.raises(ExportError, match="--dynamic"):
        tensorrt.profile_shapes(META, (1, 1, 256, 256), max_shape="1x512x512")


def test_layer_precisions_read_both_inspector_formats():
    every, compute = tensorrt.layer_precisions(json.dumps(TRT10_INFO))
    assert every == {"fp16": 1, "fp32": 1} and compute == {"fp16": 1}
    every, compute = tensorrt.layer_precisions(TRT11_INFO)
    assert compute == {"fp32": 1}
    with pytest.raises(ExportError, match="DETAILED"):
        tensorrt.layer_precisions({"Layers": ["conv1", "softmax"]})


def test_check_precision_fails_when_fp16_was_not_delivered():
    tensorrt.check_precision("fp16", tensorrt.layer_precisions(TRT10_INFO)[1])
    tensorrt.check_precision("fp32", tensorrt.layer_precisions(TRT11_INFO)[1])
    with pytest.raises(ExportError, match="asked for fp16"):
        tensorrt.check_precision("fp16", tensorrt.layer_precisions(TRT11_INFO)[1])


def test_engine_sidecar_is_the_model_meta(tmp_path):
    path = tensorrt.write_engine_sidecar(META.model_copy(update={"precision": "fp16"}), tmp_path / "model.engine")
    assert path.name == "model.engine.json"
    assert ModelMeta.load(path).precision == "fp16"


def test_missing_tensorrt_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailableError, match=r"usseg-sdk\[trt\]"):
        tensorrt.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", precision="fp32",
                              profile=tensorrt.profile_shapes(META, (1, 1, 16, 16)))


# -- the build's orchestration against a stand-in of the tensorrt module -----------------------------------------
def _fake_trt(version: str, *, fp16_flag: bool, layer_dtype: str) -> types.ModuleType:
    calls: dict = {"flags": [], "network_flags": None, "profile": None, "cache_in": None}

    class Config:
        profiling_verbosity = None

        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def set_flag(self, flag):
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile):
            calls["profile"] = profile.shapes

        def create_timing_cache(self, data):
            calls["cache_in"] = bytes(data)
            return types.SimpleNamespace(serialize=lambda: b"cache-after-build")

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"cache-after-build")

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            self.shapes = (name, mn, opt, mx)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"ENGINE"

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return True

    info = {"Layers": [{"Name": "conv", "LayerType": "CaskConvolution",
                        "Outputs": [{"Name": "y", "Format/Datatype": f"Row major linear {layer_dtype}"}]}]}
    context = types.SimpleNamespace(set_input_shape=lambda name, shape: None)
    engine = types.SimpleNamespace(create_execution_context=lambda: context,
                                   create_engine_inspector=lambda: types.SimpleNamespace(
                                       execution_context=None, get_engine_information=lambda fmt: json.dumps(info)))
    flags = {"FP16": "FP16"} if fp16_flag else {}
    return types.SimpleNamespace(
        __version__=version, calls=calls, Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda s, lvl: None}),
        Builder=Builder, OnnxParser=Parser, BuilderFlag=types.SimpleNamespace(**flags),
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1),
        ProfilingVerbosity=types.SimpleNamespace(DETAILED="detailed"),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        LayerInformationFormat=types.SimpleNamespace(JSON="json"),
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine))


@pytest.mark.parametrize(("version", "has_flag", "mode"), [("10.9.0", True, "flag"), ("11.1.0", False, "convert")])
def test_fp16_mode_follows_the_tensorrt_version(monkeypatch, tmp_path, version, has_flag, mode):
    trt = _fake_trt(version, fp16_flag=has_flag, layer_dtype="FP16")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    assert tensorrt.resolve_fp16_mode(trt, "fp16", "auto") == mode
    assert tensorrt.resolve_fp16_mode(trt, "fp32", "auto") is None
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"cache-before")
    report = tensorrt.build_engine(Path("m.onnx"), tmp_path / "model.engine", precision="fp16",
                                   profile=tensorrt.profile_shapes(META, (1, 1, 16, 16)), fp16_mode=mode,
                                   timing_cache=cache, workspace_mb=64)
    assert (tmp_path / "model.engine").read_bytes() == b"ENGINE"
    assert cache.read_bytes() == b"cache-after-build" and trt.calls["cache_in"] == b"cache-before"
    assert trt.calls["flags"] == (["FP16"] if mode == "flag" else [])
    assert trt.calls["network_flags"] == (0 if mode == "flag" else 1 << 1)  # strongly typed for the fp16 graph
    assert trt.calls["profile"] == ("image", (1, 1, 16, 16), (1, 1, 16, 16), (1, 1, 16, 16))
    assert report.compute_layers == {"fp16": 1}


def test_flag_mode_is_refused_on_tensorrt_11(monkeypatch):
    trt = _fake_trt("11.1.0", fp16_flag=False, layer_dtype="FP16")
    with pytest.raises(ExportError, match="removed in 11"):
        tensorrt.resolve_fp16_mode(trt, "fp16", "flag")


def test_build_fails_when_fp16_is_not_delivered(monkeypatch, tmp_path):
    trt = _fake_trt("10.9.0", fp16_flag=True, layer_dtype="FP32")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(ExportError, match="asked for fp16"):
        tensorrt.build_engine(Path("m.onnx"), tmp_path / "model.engine", precision="fp16",
                              profile=tensorrt.profile_shapes(META, (1, 1, 16, 16)), fp16_mode="flag",
                              timing_cache=tmp_path / "cache")


@pytest.mark.trt
def test_real_engine_build_and_run(tmp_path):
    """On a GPU machine with TensorRT: export a tiny model as an fp16 engine and run it through Segmenter."""
    import numpy as np
    import torch

    from export.pipeline import EngineOptions, ExportOptions, export_method
    from tests.export.tiny_methods import TinySeg, train_steps
    from usseg_sdk.segmenter import Segmenter

    method = TinySeg()
    train_steps(method, torch.rand(4, 1, 32, 32))
    options = ExportOptions(out=tmp_path / "out", formats=("onnx", "engine"), precision="fp16", dynamic=True,
                            verify_count=2, engine=EngineOptions("1x32x32", "2x64x64", "4x256x256",
                                                                 timing_cache=tmp_path / "t.cache"))
    result = export_method(method, options)
    assert (result.out / "model.engine").is_file() and (result.out / "model.engine.json").is_file()
    seg = Segmenter(result.out, device="cuda")
    assert seg.predict(np.zeros((64, 64), np.uint8)).labels.shape == (64, 64)
