"""The export pipeline on small in-process methods: artifacts, verification, calibration, precisions, AC's plain
graph, atomicity (an interrupted export leaves nothing), and the runtime's ``usseg calibrate`` on our graph."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import pipeline
from export.calibrate import CalibrationOptions
from export.errors import VerificationError
from export.pipeline import ExportOptions, export_method
from export.verify import Thresholds
from tests.export.graph_checks import assert_plain
from tests.export.tiny_methods import TinyAC, TinySeg, train_steps
from usseg_sdk.meta import MAPPING_INITIALIZER, SCORES_INITIALIZER, ModelMeta
from usseg_sdk.segmenter import Segmenter

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "neu-seg"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    method = TinySeg()
    train_steps(method, torch.rand(4, 1, 32, 32))
    return method


def _options(out: Path, **kw) -> ExportOptions:
    frames = {"verify_images": SAMPLE / "images", "verify_masks": SAMPLE / "masks",
              "int8_calibration": SAMPLE / "images"}
    return ExportOptions(out=out, input_size=kw.pop("input_size", (64, 64)), verify_count=kw.pop("verify_count", 3),
                         int8_count=kw.pop("int8_count", 4), **{**frames, **kw})


def _inits(path: Path) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
            if i.name.startswith("usseg_")}


def test_fp32_export_writes_verified_artifacts(tiny, tmp_path):
    out = tmp_path / "export"
    result = export_method(tiny, _options(out, scores=True))
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx", "verify.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging folder left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "model.onnx").stat().st_mode) == 0o666 & ~umask  # not the temp file's 0600
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] is True and report["precision"] == "fp32"
    assert report["max_abs_diff_probs"] <= 1e-4 and report["label_agreement"] >= 0.999
    assert report["miou_reference"] is not None and report["export"]["folded_batchnorms"] == 2
    meta = ModelMeta.load(out / "model.json")
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    embedded = ModelMeta.from_metadata_props(props)
    assert meta == embedded == result.meta
    assert meta.exporter.startswith("torch.onnx dynamo") and meta.opset == 18 and meta.precision == "fp32"
    assert meta.input.dtype == "uint8" and meta.input.normalized_in_graph and meta.outputs.scores == "scores"
    assert {"torch", "onnx", "onnxruntime"} <= set(meta.versions)
    seg = Segmenter(out, device="cpu")
    frame = np.full((40, 50), 128, np.uint8)
    assert seg.predict(frame).labels.shape == (40, 50)


def test_runtime_calibrate_rewrites_our_graph(tiny, tmp_path):
    from usseg_sdk.cli import main as usseg_main

    export_method(tiny, _options(tmp_path / "export", scores=True))
    code = usseg_main(["calibrate", "--model", str(tmp_path / "export"), "--images", str(SAMPLE / "images"),
                       "--masks", str(SAMPLE / "masks"), "--out", str(tmp_path / "calibrated"), "--device", "cpu"])
    assert code == 0
    meta = ModelMeta.load(tmp_path / "calibrated" / "model.json")
    inits = _inits(tmp_path / "calibrated" / "model.onnx")
    assert inits[MAPPING_INITIALIZER].tolist() == meta.cluster_to_class and meta.mapping.kind == "hungarian"
    assert inits[SCORES_INITIALIZER].shape == (4, 4)
    assert Segmenter(tmp_path / "calibrated", device="cpu").predict(np.zeros((64, 64), np.uint8)).scores.shape[0] == 4


def test_calibrate_at_export_stores_the_mapping_in_graph_and_metadata(tiny, tmp_path):
    cal = CalibrationOptions(images=SAMPLE / "images", masks=SAMPLE / "masks")
    result = export_method(tiny, _options(tmp_path / "out", scores=True, calibration=cal))
    meta = result.meta
    assert meta.mapping.kind == "hungarian" and meta.mapping.n_images == 40
    assert meta.class_names == (SAMPLE / "labels.txt").read_text().split()
    assert sorted(meta.cluster_to_class) == [0, 1, 2, 3]
    assert "miou" in meta.mapping.metrics
    inits = _inits(tmp_path / "out" / "model.onnx")
    assert inits[MAPPING_INITIALIZER].tolist() == meta.cluster_to_class
    expected = np.zeros((4, 4), np.float32)
    expected[meta.cluster_to_class, np.arange(4)] = 1
    np.testing.assert_array_equal(inits[SCORES_INITIALIZER], expected)
    report = json.loads((tmp_path / "out" / "verify.json").read_text())
    assert report["calibration"]["mode"] == "hungarian" and report["miou_mapping"] == "model (hungarian)"


def test_over_clustering_head_calibrates_many_to_one(tiny, tmp_path):
    """Majority voting names all 6 clusters background here, which calibration refuses; the mIoU-fitted mapping
    (many-to-one too) names defects."""
    cal = CalibrationOptions(images=SAMPLE / "images", masks=SAMPLE / "masks", mode="miou")
    meta = export_method(tiny, _options(tmp_path / "out", head="over", calibration=cal)).meta
    assert meta.n_clusters == 6 and meta.n_classes == 4 and meta.mapping.kind == "miou"
    assert any(c != 0 for c in meta.cluster_to_class)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_is_verified_with_miou_drop(tiny, tmp_path, precision):
    result = export_method(tiny, _options(tmp_path / "out", precision=precision, dynamic=True, input_size=None))
    assert result.meta.precision == precision
    report = result.verify
    assert report["passed"] and report["miou_drop"] is not None and report["label_agreement"] >= 0.95
    assert len({tuple(s) for s in report["shapes"]}) >= 2  # a second batch size / frame size was checked
    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
    assert ("DequantizeLinear" in ops) == (precision == "int8")


def test_ac_export_has_no_mask_or_shift_and_equals_the_unmasked_net(tmp_path):
    torch.manual_seed(0)
    method = TinyAC()
    train_steps(method, torch.rand(2, 1, 32, 32), steps=3, lr=0.01)
    result = export_method(method, _options(tmp_path / "out", dynamic=True, input_size=(32, 32)))
    assert result.verify["passed"]
    assert_plain(onnx.load(str(tmp_path / "out" / "model.onnx")))
    x = torch.randint(0, 256, (2, 1, 48, 40), dtype=torch.uint8)
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    clusters = session.run(["clusters"], {"image": x.numpy()})[0]
    with torch.no_grad():  # the unmasked torch net: every OrderedLayer has ordering None
        expected = method.inference_net()(x.float() / 255).argmax(1).numpy()
    assert (clusters == expected).mean() > 0.999


def test_interrupted_export_leaves_nothing(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "verify_model", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_method(tiny, _options(out))
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old model")
    with pytest.raises(KeyboardInterrupt):
        export_method(tiny, _options(out))
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "model.onnx").read_bytes() == b"old model"
    assert [p.name for p in out.iterdir()] == ["model.onnx"]


def test_failed_verification_writes_only_the_numbers(tiny, tmp_path):
    out = tmp_path / "out"
    impossible = Thresholds(max_abs_diff=1e-4, min_agreement=1.01, max_miou_drop=None)
    with pytest.raises(VerificationError, match="label agreement") as info:
        export_method(tiny, _options(out, thresholds=impossible))
    assert info.value.report["label_agreement"] >= 0.999
    assert [p.name for p in out.iterdir()] == ["verify.failed.json"]
    assert json.loads((out / "verify.failed.json").read_text())["passed"] is False
    export_method(tiny, _options(out))  # a later good export replaces it
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx", "verify.json"]


def test_static_export_takes_the_size_of_the_users_frames(tiny, tmp_path):
    """A static graph without a size is built for the calibration frames' size, not the training crop."""
    cal = CalibrationOptions(images=SAMPLE / "images", masks=SAMPLE / "masks")
    options = ExportOptions(out=tmp_path / "out", calibration=cal, verify_count=2, dynamic=False)
    assert pipeline.user_frame_size(options) == (200, 200)
    export_method(tiny, options)
    dims = onnx.load(str(tmp_path / "out" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 200, 200]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, size in enumerate([(32, 32), (40, 48)]):
        cv2.imwrite(str(mixed / f"{i}.png"), np.zeros(size, np.uint8))
    assert pipeline.user_frame_size(ExportOptions(out=tmp_path / "x", verify_images=mixed)) == (40, 48)  # holds all
    assert pipeline.user_frame_size(ExportOptions(out=tmp_path / "x")) is None  # no user frames: native size
    export_method(tiny, ExportOptions(out=tmp_path / "from", dynamic=False, static_from=mixed, verify=False))
    dims = onnx.load(str(tmp_path / "from" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 40, 48]


def test_the_training_range_of_16_bit_frames_travels_into_the_model(tiny, tmp_path):
    """A run trained with data.train.max_value (12-bit data in 16-bit files) exports it as InputSpec.max_value, so
    the runtime scales line frames as training did; a run without one leaves it unset."""
    from usseg_sdk.meta import TrainingSummary

    twelve_bit = TrainingSummary(config={"data": {"train": {"kind": "folder", "max_value": 4095}}})
    meta = export_method(tiny, _options(tmp_path / "a"), twelve_bit).meta
    assert meta.input.max_value == 4095 == ModelMeta.load(tmp_path / "a" / "model.json").input.max_value
    assert export_method(tiny, _options(tmp_path / "b")).meta.input.max_value is None
