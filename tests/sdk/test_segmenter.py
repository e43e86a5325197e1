"""Segmenter API on the onnxruntime CPU backend: shapes, mapping, batching, clone, threads, metadata sources."""

from __future__ import annotations

import doctest
import importlib
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from usseg_sdk import Segmentation, Segmenter, SegmenterConfig
from usseg_sdk.meta import METADATA_KEY, ModelMeta

CPU = SegmenterConfig(device="cpu")


def bare_run(path, image: np.ndarray, outputs=("labels",)) -> list[np.ndarray]:
    """The model run directly by onnxruntime on an already-shaped (B, C, H, W) uint8 array."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(list(outputs), {"image": image})


def frames(seed: int, shape: tuple[int, ...], n: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def test_predict_matches_bare_onnxruntime(models):
    seg = Segmenter(models["grey"], config=CPU)
    (frame,) = frames(0, (24, 40))
    res = seg.predict(frame)
    labels, clusters, scores = bare_run(models["grey"], frame[None, None], ("labels", "clusters", "scores"))
    assert isinstance(res, Segmentation)
    assert res.labels.dtype == np.uint8 and res.labels.shape == (24, 40)
    np.testing.assert_array_equal(res.labels, labels[0])
    np.testing.assert_array_equal(res.clusters, clusters[0])
    np.testing.assert_allclose(res.scores, scores[0], rtol=1e-6)
    # labels are clusters mapped through meta.cluster_to_class (0,1,1,2)
    np.testing.assert_array_equal(res.labels, np.array([0, 1, 1, 2], np.uint8)[res.clusters])
    assert len(np.unique(res.labels)) > 1, "degenerate test model: one class everywhere"
    np.testing.assert_allclose(res.scores.sum(axis=0), 1.0, atol=1e-5)


def test_clusters_only_model_is_mapped_by_the_runtime(models):
    seg = Segmenter(models["clusters_only"], config=CPU)
    (frame,) = frames(1, (20, 30))
    res = seg.predict(frame)
    (clusters,) = bare_run(models["clusters_only"], frame[None, None], ("clusters",))
    np.testing.assert_array_equal(res.labels, np.array([0, 2, 1, 2], np.uint8)[clusters[0]])


def test_scores_and_clusters_can_be_switched_off(models):
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu", scores=False, clusters=False))
    res = seg.predict(frames(2, (16, 16))[0])
    assert res.scores is None and res.clusters is None
    full = Segmenter(models["grey"], config=CPU).predict(frames(2, (16, 16))[0])
    np.testing.assert_array_equal(res.labels, full.labels)


def test_predict_batch_equals_predict_for_mixed_sizes(models):
    seg = Segmenter(models["rgb_stride4"], config=SegmenterConfig(device="cpu", batch_size=2))
    batch = frames(3, (20, 28, 3), 3) + frames(4, (13, 17, 3), 2)
    results = seg.predict_batch(batch)
    assert [r.labels.shape for r in results] == [(20, 28)] * 3 + [(13, 17)] * 2
    for frame, res in zip(batch, results, strict=True):
        single = seg.predict(frame)
        np.testing.assert_array_equal(res.labels, single.labels)
        np.testing.assert_allclose(res.scores, single.scores, atol=1e-6)


def test_export_directory_and_engine_less_dir(models, tmp_path):
    seg = Segmenter(models["grey"].parent, config=CPU)  # the export directory
    assert seg.backend.path == models["grey"]
    assert seg.class_names == ["background", "defect_1", "defect_2"]


def test_meta_from_sidecar_when_not_embedded(models, tmp_path):
    import onnx

    model = onnx.load(str(models["grey"]))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "model.onnx"))
    shutil.copy(models["grey"].parent / "model.json", tmp_path / "model.json")
    seg = Segmenter(tmp_path / "model.onnx", config=CPU)
    assert seg.meta == ModelMeta.load(models["grey"].parent / "model.json")


def test_static_shape_and_batch_model_pads_and_tiles(models):
    seg = Segmenter(models["static"], config=CPU)
    small, large = frames(5, (20, 30))[0], frames(6, (70, 100))[0]
    res_small = seg.predict(small)
    padded = np.pad(small, ((0, 12), (0, 18)), mode="reflect")
    np.testing.assert_array_equal(res_small.labels, bare_run(models["static"], padded[None, None])[0][0, :20, :30])
    res = seg.predict_batch([large, small, large])
    assert [r.labels.shape for r in res] == [(70, 100), (20, 30), (70, 100)]
    np.testing.assert_array_equal(res[1].labels, res_small.labels)


def test_resize_to_native(models, tmp_path):
    meta = ModelMeta.load(models["grey"].parent / "model.json")
    spec = meta.input.model_copy(update={"native_size": (16, 24), "resize_to_native": True})
    native = meta.model_copy(update={"input": spec})
    import onnx

    model = onnx.load(str(models["grey"]))
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=native.to_json())
    onnx.save(model, str(tmp_path / "model.onnx"))
    seg = Segmenter(tmp_path / "model.onnx", config=CPU)
    frame = np.kron(frames(7, (16, 24))[0], np.ones((3, 3), np.uint8))  # (48, 72): 3x the native size
    res = seg.predict(frame)
    assert res.labels.shape == (48, 72) and res.scores.shape == (3, 48, 72)
    at_native = Segmenter(models["grey"], config=CPU).predict(frames(7, (16, 24))[0])
    np.testing.assert_array_equal(res.labels, np.kron(at_native.labels, np.ones((3, 3), np.uint8)))


def test_warmup_clone_info_and_repr(models):
    seg = Segmenter(models["grey"], config=CPU)
    seg.warmup((32, 32), batch_size=2)
    twin = seg.clone()
    assert twin.backend is seg.backend  # onnxruntime sessions are shared between threads
    (frame,) = frames(8, (24, 24))
    np.testing.assert_array_equal(twin.predict(frame).labels, seg(frame).labels)
    info = seg.info()
    assert info["backend"]["providers"] == ["CPUExecutionProvider"]
    assert info["meta"]["cluster_to_class"] == [0, 1, 1, 2]
    assert "defect_2" in repr(seg)


def test_threads_give_the_sequential_labels(models):
    seg = Segmenter(models["rgb_stride4"], config=SegmenterConfig(device="cpu", tile_size=(32, 32), overlap=8))
    batch = frames(9, (40, 52, 3), 4) + frames(10, (24, 20, 3), 4)
    expected = [seg.predict(f).labels for f in batch]
    start = threading.Barrier(4)

    def work(i: int) -> list[np.ndarray]:
        start.wait()
        return [seg.predict(batch[(i + j) % len(batch)]).labels for j in range(len(batch))]

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(work, range(4)))
    for i, labels in enumerate(outs):
        for j, got in enumerate(labels):
            np.testing.assert_array_equal(got, expected[(i + j) % len(batch)])


def test_env_config_is_read_when_no_config_is_given(models, monkeypatch):
    monkeypatch.setenv("USSEG_DEVICE", "cpu")
    monkeypatch.setenv("USSEG_SCORES", "off")
    monkeypatch.setenv("USSEG_TILE_SIZE", "16x24")
    seg = Segmenter(models["grey"])
    assert seg.config.device == "cpu" and seg.config.tile_size == (16, 24)
    assert seg.predict(frames(11, (20, 20))[0]).scores is None


@pytest.mark.parametrize("module", ["usseg_sdk.tiling", "usseg_sdk.preprocess", "usseg_sdk.config",
                                    "usseg_sdk.result", "usseg_sdk.meta"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0


def test_min_size_pads_small_frames(tmp_path):
    from tests.sdk.onnx_models import build_model

    path, _ = build_model(tmp_path / "model.onnx", n_clusters=3, min_size=16, stride=2)
    seg = Segmenter(path, config=CPU)
    frame = frames(12, (5, 7))[0]
    res = seg.predict(frame)
    assert res.labels.shape == (5, 7)
    padded = np.pad(frame, ((0, 11), (0, 9)), mode="reflect")  # up to min_size 16, reflect-101
    np.testing.assert_array_equal(res.labels, bare_run(path, padded[None, None])[0][0, :5, :7])
