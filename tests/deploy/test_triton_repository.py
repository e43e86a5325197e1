"""The Triton model-repository generator, checked against Triton's own model-config schema (inference.ModelConfig)."""

import importlib.util
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from usseg_sdk.meta import ModelMeta

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402  (comes with tritonclient)

from tests.sdk import onnx_models  # noqa: E402

spec = importlib.util.spec_from_file_location("make_repository", ROOT / "deploy" / "triton" / "make_repository.py")
make_repository_mod = importlib.util.module_from_spec(spec)
sys.modules["make_repository"] = make_repository_mod  # dataclasses look their module up there
spec.loader.exec_module(make_repository_mod)


def write_export(folder, *, dynamic=True):
    """An export directory (model.onnx + model.json) following the exported-graph contract, with scores."""
    static = {} if dynamic else {"static_hw": (16, 16), "static_batch": 1}
    onnx_models.build_model(folder / "model.onnx", n_clusters=2, scores=True, **static)
    return folder


def parse(config_path):
    return text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())


def test_onnx_repository_parses_as_triton_model_config(tmp_path):
    export = write_export(tmp_path / "export")
    folder = make_repository_mod.make_repository(export, tmp_path / "repo", name="neu", max_batch_size=8,
                                                 instances=2, kind="cpu")
    assert (folder / "1" / "model.onnx").read_bytes() == (export / "model.onnx").read_bytes()
    assert ModelMeta.load(folder / "model.json").method == "test"
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


def test_client_input_matches_the_sdk_preprocessing(tmp_path):
    """The Triton client feeds the server the same tensor the embedded Segmenter feeds onnxruntime."""
    import cv2

    from usseg_sdk import Segmenter

    client_spec = importlib.util.spec_from_file_location("triton_client", ROOT / "deploy" / "triton" / "client.py")
    client = importlib.util.module_from_spec(client_spec)
    client_spec.loader.exec_module(client)
    path, meta = onnx_models.build_model(tmp_path / "m" / "model.onnx", channels=3, color_order="rgb", n_clusters=3,
                                         stride=4)
    frame = cv2.imread(str(ROOT / "samples" / "neu-seg" / "images" / "000111.jpg"))[:, :198]  # 200x198: padded
    seg = Segmenter(path, device="cpu")
    assert np.array_equal(client.prepare(frame, meta), seg.preprocess([frame]))
    assert client.prepare(frame, meta).shape == (1, 3, 200, 200)


@pytest.mark.slow
def test_triton_server_round_trip(tmp_path):
    """Start a real tritonserver on the generated repository; served labels must equal the SDK's.

    Skipped where the tritonserver binary is absent (CI, this build machine); runs in NVIDIA's Triton image.
    """
    import shutil as sh
    import socket
    import subprocess
    import time

    import cv2

    from usseg_sdk import Segmenter

    if sh.which("tritonserver") is None:
        pytest.skip("tritonserver is not installed on this machine")
    import tritonclient.grpc as grpcclient

    export = write_export(tmp_path / "export")
    make_repository_mod.make_repository(export, tmp_path / "repo", name="toy")
    ports = []
    for _ in range(3):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    server = subprocess.Popen(["tritonserver", f"--model-repository={tmp_path / 'repo'}", f"--http-port={ports[0]}",
                               f"--grpc-port={ports[1]}", f"--metrics-port={ports[2]}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"127.0.0.1:{ports[1]}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if grpcclient.InferenceServerClient(url=url).is_model_ready("toy"):
                    break
            except Exception:  # server still starting
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("tritonserver did not get the model ready within 120 s")
        client_spec = importlib.util.spec_from_file_location("triton_client", ROOT / "deploy" / "triton" / "client.py")
        client = importlib.util.module_from_spec(client_spec)
        client_spec.loader.exec_module(client)
        frame = cv2.imread(str(ROOT / "samples" / "neu-seg" / "images" / "000111.jpg"))
        meta = ModelMeta.load(export / "model.json")
        served = client.infer_labels(frame, meta, url=url, model="toy")
        assert np.array_equal(served, Segmenter(export, device="cpu").predict(frame).labels)
    finally:
        server.terminate()
        server.wait(timeout=30)
