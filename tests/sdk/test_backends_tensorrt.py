"""Native TensorRT backend: the not-installed errors here, its logic against a CPU stand-in (fake_tensorrt.py),
and the real thing under the ``trt`` marker (skipped without TensorRT and a GPU)."""

from __future__ import annotations

import logging
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.sdk import fake_tensorrt
from usseg_sdk import BackendUnavailableError, ModelLoadError, Segmenter, SegmenterConfig
from usseg_sdk.meta import ModelMeta


@pytest.fixture
def engine_dir(models, tmp_path):
    """An export directory holding model.engine (+ model.engine.json) and the model.onnx it came from."""
    shutil.copy(models["grey"], tmp_path / "model.onnx")
    fake_tensorrt.write_engine(tmp_path / "model.engine", models["grey"])
    ModelMeta.load(models["grey"].parent / "model.json").save(tmp_path / "model.engine.json")
    return tmp_path


@pytest.fixture
def fake_trt(monkeypatch):
    rt = fake_tensorrt.make_cudart()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make_tensorrt(max_hw=(64, 64)))
    monkeypatch.setitem(sys.modules, "cuda", type(sys)("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", type(sys)("cuda.bindings"))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    return rt


def test_tensorrt_not_installed(engine_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_tensorrt.make_cudart())
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not installed: pip install 'usseg-sdk\[trt\]'"):
        Segmenter(engine_dir / "model.engine", device="tensorrt")


def test_cuda_python_not_installed(engine_dir, monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailableError, match=r"cuda-python is not installed.*usseg-sdk\[trt\]"):
        Segmenter(engine_dir / "model.engine", device="auto")


def test_engine_on_cpu_is_refused(engine_dir):
    with pytest.raises(BackendUnavailableError, match="runs only on an NVIDIA GPU"):
        Segmenter(engine_dir / "model.engine", device="cpu")


def test_auto_falls_back_from_engine_to_onnx_with_a_warning(engine_dir, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with caplog.at_level(logging.WARNING, logger="usseg_sdk"):
        seg = Segmenter(engine_dir, device="auto")
    assert seg.backend.name == "onnxruntime" and seg.backend.path == engine_dir / "model.onnx"
    assert any("cannot run the TensorRT engine" in r.getMessage() for r in caplog.records)
    assert Segmenter(engine_dir, device="cpu").backend.name == "onnxruntime"


def test_old_tensorrt_is_refused(engine_dir, monkeypatch, fake_trt):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make_tensorrt(version="8.6.1"))
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 8\.6\.1 is too old"):
        Segmenter(engine_dir / "model.engine", device="tensorrt")


def test_unloadable_engine(tmp_path, fake_trt, models):
    (tmp_path / "model.engine").write_bytes(b"garbage")
    ModelMeta.load(models["grey"].parent / "model.json").save(tmp_path / "model.engine.json")
    with pytest.raises(ModelLoadError, match="not a TensorRT engine"):
        Segmenter(tmp_path / "model.engine", device="tensorrt")


def test_engine_needs_a_sidecar(tmp_path, fake_trt, models):
    fake_tensorrt.write_engine(tmp_path / "x.engine", models["grey"])
    with pytest.raises(ModelLoadError, match="no usseg metadata"):
        Segmenter(tmp_path / "x.engine", device="tensorrt")


def test_backend_logic_on_the_stand_in(engine_dir, fake_trt, models):
    seg = Segmenter(engine_dir, device="tensorrt", config=SegmenterConfig(overlap=8, batch_size=4))
    assert seg.backend.name == "tensorrt" and seg.backend.describe()["gpu"] == "Fake GPU"
    assert seg._tile == (64, 64), "the optimisation profile's max shape caps the tile"
    reference = Segmenter(models["grey"], config=SegmenterConfig(device="cpu", tiling=False))
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(30, 50), (30, 50), (100, 150), (7, 9)]]
    for frame, res in zip(batch, seg.predict_batch(batch), strict=True):
        h, w = frame.shape  # (7, 9) is below the profile's 8x8 minimum: reflect-padded to (8, 9)
        ref = reference.predict(np.pad(frame, ((0, max(0, 8 - h)), (0, max(0, 8 - w))), mode="reflect"))
        np.testing.assert_array_equal(res.labels, ref.labels[:h, :w])  # (100, 150) went through 64x64 tiles
        np.testing.assert_allclose(res.scores, ref.scores[:, :h, :w], atol=1e-6)
    assert {1, 2} <= set(fake_trt.calls), "host->device and device->host copies"
    twin = seg.clone()
    assert twin.backend is not seg.backend and twin.backend.context is not seg.backend.context
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda s: s.predict(batch[2]).labels, [seg, twin, seg]))
    for out in outs:
        np.testing.assert_array_equal(out, reference.predict(batch[2]).labels)
    seg.close()
    twin.close()


def test_recalibrated_engine_maps_clusters_itself(engine_dir, fake_trt):
    """A TensorRT engine cannot be rewritten: calibration writes a sidecar with outputs.labels None."""
    meta = ModelMeta.load(engine_dir / "model.engine.json")
    new = meta.model_copy(update={"cluster_to_class": [2, 2, 0, 1],
                                  "outputs": meta.outputs.model_copy(update={"labels": None})})
    new.save(engine_dir / "model.engine.json")
    seg = Segmenter(engine_dir / "model.engine", device="tensorrt", config=SegmenterConfig(scores=False))
    res = seg.predict(np.random.default_rng(1).integers(0, 256, (20, 20), dtype=np.uint8))
    np.testing.assert_array_equal(res.labels, np.array([2, 2, 0, 1], np.uint8)[res.clusters])


@pytest.mark.trt
def test_real_tensorrt_engine_matches_onnxruntime(models, tmp_path):
    """On a GPU machine with TensorRT: build an engine from the test model and compare with onnxruntime."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(models["grey"].read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 1, 8, 8), (1, 1, 64, 64), (4, 1, 256, 256))
    config.add_optimization_profile(profile)
    (tmp_path / "model.engine").write_bytes(bytes(builder.build_serialized_network(network, config)))
    ModelMeta.load(models["grey"].parent / "model.json").save(tmp_path / "model.engine.json")
    seg = Segmenter(tmp_path / "model.engine", device="tensorrt", config=SegmenterConfig(overlap=8))
    ref = Segmenter(models["grey"], device="cpu")
    frame = np.random.default_rng(0).integers(0, 256, (200, 300), dtype=np.uint8)
    got, want = seg.predict(frame), ref.predict(frame)
    assert (got.labels == want.labels).mean() > 0.999
