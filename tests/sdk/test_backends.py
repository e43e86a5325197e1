"""Backend selection, provider errors and warnings (onnxruntime), the registry, and the onnxruntime conflict."""

from __future__ import annotations

import importlib.metadata
import logging
import sys

import numpy as np
import onnxruntime as ort
import pytest

from usseg_sdk import BackendUnavailableError, Segmenter, SegmenterConfig
from usseg_sdk.backends import available_backends, find_model_files, get_backend
from usseg_sdk.backends import ort as ort_backend


def test_registry_lists_and_imports_lazily():
    assert available_backends() == ["onnxruntime", "tensorrt"]
    assert get_backend("onnxruntime").__name__ == "OnnxRuntimeBackend"
    with pytest.raises(BackendUnavailableError, match=r"unknown backend 'openvino'.*onnxruntime"):
        get_backend("openvino")


def test_cpu_backend_runs_on_cpu_provider(models):
    seg = Segmenter(models["grey"], device="cpu")
    assert seg.backend.name == "onnxruntime"
    assert seg.backend.session.get_providers() == ["CPUExecutionProvider"]


def test_auto_without_cuda_runs_on_cpu_without_a_warning(models, caplog):
    """device="auto" (the default) did not ask for a GPU: a CPU install is normal, so the GPU hint is INFO only."""
    assert "CUDAExecutionProvider" not in ort.get_available_providers(), "this test expects a CPU-only onnxruntime"
    with caplog.at_level(logging.INFO, logger="usseg_sdk"):
        seg = Segmenter(models["grey"], device="auto")
    assert seg.backend.session.get_providers() == ["CPUExecutionProvider"]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("no CUDA execution provider" in r.getMessage() and "usseg-sdk[gpu]" in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)


@pytest.mark.parametrize("device, extra", [("cuda", r"usseg-sdk\[gpu\]"), ("tensorrt", r"usseg-sdk\[trt\]")])
def test_explicit_gpu_device_without_provider_raises(models, device, extra):
    with pytest.raises(BackendUnavailableError, match=extra):
        Segmenter(models["grey"], device=device)


def test_explicit_providers(models):
    seg = Segmenter(models["grey"], config=SegmenterConfig(providers=("CPUExecutionProvider",)))
    assert seg.backend.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="OpenVINOExecutionProvider"):
        Segmenter(models["grey"], config=SegmenterConfig(providers=("OpenVINOExecutionProvider",)))


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_provider_listed_but_failing_is_caught(models, monkeypatch, caplog):
    """onnxruntime drops a provider it cannot start without an error; the backend notices."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="could not start CUDAExecutionProvider"):
        Segmenter(models["grey"], device="cuda")
    with caplog.at_level(logging.WARNING, logger="usseg_sdk"):
        seg = Segmenter(models["grey"], device="auto")
    assert seg.backend.session.get_providers() == ["CPUExecutionProvider"]
    assert any("could not start CUDAExecutionProvider" in r.getMessage() for r in caplog.records)


def test_cpu_and_gpu_onnxruntime_installed_together(monkeypatch, caplog):
    installed = {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.0"}

    def version(name: str) -> str:
        if name in installed:
            return installed[name]
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ort_backend.importlib.metadata, "version", version)
    monkeypatch.setattr(ort_backend, "_conflict_warned", False)
    assert ort_backend.installed_distributions() == ["onnxruntime", "onnxruntime-gpu"]
    with caplog.at_level(logging.WARNING, logger="usseg_sdk"):
        ort_backend.warn_if_conflicting()
    assert any("onnxruntime, onnxruntime-gpu" in r.getMessage() and "pip uninstall" in r.getMessage()
               for r in caplog.records)
    # and the error for a missing CUDA provider says so too
    with pytest.raises(BackendUnavailableError, match="several onnxruntime distributions"):
        ort_backend.resolve_providers("cuda", SegmenterConfig(), ["CPUExecutionProvider"])
    installed.pop("onnxruntime-gpu")
    assert ort_backend.conflict_message(ort_backend.installed_distributions()) is None


def test_onnxruntime_missing_names_the_extra(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install onnxruntime \(CPU\) or onnxruntime-gpu"):
        Segmenter(models["grey"], device="cpu")


def test_tensorrt_provider_options_from_config(tmp_path):
    cfg = SegmenterConfig(device="tensorrt", trt_fp16=True, trt_cache_dir=tmp_path / "cache", trt_workspace_mb=512)
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = ort_backend.resolve_providers("tensorrt", cfg, available)
    assert [p for p, _ in providers] == available
    trt_opts = providers[0][1]
    assert trt_opts["trt_fp16_enable"] is True and trt_opts["trt_engine_cache_enable"] is True
    assert trt_opts["trt_engine_cache_path"] == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
    assert trt_opts["trt_max_workspace_size"] == 512 << 20
    assert providers[1][1] == {"device_id": 0}


def test_engine_files_are_recognised(tmp_path, models):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    assert find_model_files(engine).engine == engine
    assert find_model_files(models["grey"].parent).onnx == models["grey"]


def test_frames_survive_backend_round_trip(models):
    seg = Segmenter(models["grey"], device="cpu")
    frame = np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8)
    before = frame.copy()
    seg.predict(frame)
    np.testing.assert_array_equal(frame, before)  # the caller's frame is never written to
