"""Issue 13.7 on export: a dynamic graph by default, tiling defaults from the net's receptive field, verification at
the size the model will see, and int8 / verification frames that are the user's (and said to be)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export.errors import ExportError, VerificationError
from export.frames import FrameProgress, training_frames
from export.graph import InferenceGraph
from export.pipeline import ExportOptions, export_method
from export.receptive_field import MAX_OVERLAP, overlap_for, receptive_radius
from export.verify import Thresholds, load_frames, verify_model
from tests.export.tiny_methods import TinySeg, train_steps
from training.cli_fit import LineProgress
from usseg_sdk import Segmenter, SegmenterConfig
from usseg_sdk.tiling import DEFAULT_MAX_PIXELS

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "neu-seg"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    method = TinySeg()
    train_steps(method, torch.rand(4, 1, 32, 32))
    return method


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """Five sample frames in a folder of their own (the user's frames, no masks)."""
    folder = tmp_path_factory.mktemp("line")
    for path in sorted((SAMPLE / "images").iterdir())[:5]:
        shutil.copy(path, folder / path.name)
    return folder


def _reference_labels(method, frame: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        probs = InferenceGraph(method.inference_net()).eval()(torch.from_numpy(frame)[None, None])
    return probs[0].argmax(0).numpy()


def test_default_export_is_dynamic_and_runs_any_frame_size(tiny, frames, tmp_path):
    result = export_method(tiny, ExportOptions(out=tmp_path / "out", verify_images=frames, verify_count=2))
    dims = onnx.load(str(tmp_path / "out" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert result.meta.tiling.tile_size is None and result.meta.tiling.max_pixels == DEFAULT_MAX_PIXELS == 1_000_000
    seg = Segmenter(tmp_path / "out", config=SegmenterConfig(device="cpu"))
    rng = np.random.default_rng(0)
    for size in [(200, 200), (96, 160)]:
        frame = rng.integers(0, 256, size, dtype=np.uint8)
        labels = seg.predict(frame).labels
        assert labels.shape == size and seg.tile_for(frame) is None
        assert (labels == _reference_labels(tiny, frame)).mean() > 0.999


def test_overlap_comes_from_the_measured_receptive_field():
    conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)  # radius 2: a pixel reaches 2 output pixels each way
    nn.init.constant_(conv.weight, 1.0)
    net = nn.Sequential(conv, nn.Conv2d(1, 3, 1))

    def as_probs(x):
        return net(x.float() / 255).softmax(1)

    assert receptive_radius(as_probs, channels=1) == 2
    def global_context(x):  # every output pixel sees the frame's mean (pooling over the frame, attention)
        mean = (x.float() / 255).mean() * torch.ones_like(x, dtype=torch.float32)
        return torch.cat([mean, torch.zeros_like(mean)], 1).softmax(1)

    assert receptive_radius(global_context, channels=1) is None

    valid = nn.Conv2d(1, 3, 5, bias=False)  # no padding: the map is 4 px smaller, then stretched to the frame

    def stretched(x):
        y = valid(x.float() / 255)
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear").softmax(1)

    assert receptive_radius(stretched, channels=1) is None  # positions drift with the frame size: not tileable
    assert overlap_for(2, 1) == 32 and overlap_for(40, 8) == 80 and overlap_for(None, 16) == MAX_OVERLAP


def test_verification_runs_the_users_frame_size_and_catches_seams(tiny, frames, tmp_path):
    """A static 64x64 graph cut into a 3 x 3 grid of tiles without overlap differs from the net on 192x192 frames
    at the seams (95 % agreement); verification used to crop frames to 64x64 and passed it."""
    line = tmp_path / "line"
    line.mkdir()
    for path in sorted(frames.iterdir())[:3]:
        cv2.imwrite(str(line / path.name), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)[:192, :192])
    seams = ExportOptions(out=tmp_path / "seams", dynamic=False, input_size=(64, 64), tile_overlap=0,
                          verify_images=line, verify_count=3)
    with pytest.raises(VerificationError, match="label agreement") as info:
        export_method(tiny, seams)
    report = info.value.report
    assert report["frame_sizes"] == [[192, 192]] and report["tiled_frames"] == 3
    assert report["label_agreement"] < 0.99
    assert {tuple(s) for s in report["shapes"]} == {(1, 1, 64, 64)}  # graph parity at the tile size
    assert report["max_abs_diff_probs"] <= 1e-4  # the graph is right; its tiling is not
    # with the overlap export chooses (clamped below half the static tile) the same static graph passes
    ok = export_method(tiny, ExportOptions(out=tmp_path / "ok", dynamic=False, input_size=(64, 64),
                                           verify_images=line, verify_count=3))
    assert ok.meta.tiling.overlap == 31 and ok.verify["passed"] and ok.verify["tiled_frames"] == 3


def test_verification_tiles_frames_above_the_budget_like_the_line(tiny, frames, tmp_path):
    result = export_method(tiny, ExportOptions(out=tmp_path / "out", max_pixels=30_000, verify_images=frames,
                                               verify_count=2))
    report = result.verify
    assert report["passed"] and report["tiled_frames"] == 2 and report["frame_sizes"] == [[200, 200]]
    tile = Segmenter(tmp_path / "out", device="cpu").tile_for(np.zeros((200, 200), np.uint8))
    assert tile is not None and tile[0] * tile[1] <= 30_000 and [1, 1, *tile] in report["shapes"]


def test_int8_accepts_a_lower_agreement_when_miou_holds(tiny, tmp_path):
    export_method(tiny, ExportOptions(out=tmp_path / "out", verify=False))
    items = load_frames(SAMPLE / "images", SAMPLE / "masks", count=3)
    reference = InferenceGraph(tiny.inference_net()).eval()
    strict = Thresholds(max_abs_diff=None, min_agreement=1.01, max_miou_drop=0.02)
    with pytest.raises(VerificationError, match="label agreement"):
        verify_model(tmp_path / "out" / "model.onnx", reference, items, thresholds=strict)
    lenient = Thresholds(max_abs_diff=None, min_agreement=1.01, max_miou_drop=0.02, max_miou_drop_instead=0.01)
    report = verify_model(tmp_path / "out" / "model.onnx", reference, items, thresholds=lenient)
    assert report["passed"] and "mIoU drop" in report["agreement_note"]
    assert report["label_agreement"] is not None and report["cluster_agreement"] is not None
    unlabelled = load_frames(SAMPLE / "images", count=3)  # no masks, no mIoU: the agreement must hold
    with pytest.raises(VerificationError, match="no mIoU drop"):
        verify_model(tmp_path / "out" / "model.onnx", reference, unlabelled, thresholds=lenient)


def test_int8_frames_are_the_users_and_are_named(tiny, frames, tmp_path):
    with pytest.raises(ExportError, match="--int8-frames"):  # no user frames anywhere: never the bundled sample
        export_method(tiny, ExportOptions(out=tmp_path / "none", precision="int8", int8_count=2))
    result = export_method(tiny, ExportOptions(out=tmp_path / "out", precision="int8", int8_count=3,
                                               training_frames=frames, verify_count=2))
    used = result.details["int8"]["frames"]
    assert used == f"3 frame(s) from {frames} (the run's training data)"
    report = json.loads((tmp_path / "out" / "verify.json").read_text())
    assert report["export"]["int8"]["frames"] == used
    assert report["frames"] == f"2 frame(s) from {frames} (the run's training data)"  # verified on them too


def test_training_frames_come_from_the_run_config(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "neu" / "images").mkdir(parents=True)
    assert training_frames({"data": {"train": {"kind": "folder", "root": str(tmp_path / "plain")}}}) \
        == tmp_path / "plain"
    assert training_frames({"data": {"train": {"root": str(tmp_path / "neu")}}}) == tmp_path / "neu" / "images"
    assert training_frames({"data": {"train": {"root": str(tmp_path / "gone")}}}) is None
    assert training_frames({}) is None


def test_verification_without_user_frames_says_it_used_the_sample(tiny, tmp_path, caplog):
    result = export_method(tiny, ExportOptions(out=tmp_path / "out", verify_count=2))
    assert "bundled NEU-Seg sample" in result.verify["frames"]
    assert "bundled NEU-Seg sample" in caplog.text


def test_progress_lines_without_a_terminal(tiny, frames, tmp_path, capsys):
    stream = io.StringIO()
    progress = FrameProgress("verification", 3, interval_s=0, stream=stream)
    for _ in range(3):
        progress()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("verification: 1/3 frames, ") and "frames/s, ETA" in lines[0]
    assert lines[-1].startswith("verification: 3/3 frames in ")
    line = LineProgress(0, stream=stream)  # training's own lines are unchanged
    line.begin(10, 0, None)
    line.step({"step": 1, "images": 4, "loss": 0.5})
    assert stream.getvalue().splitlines()[-1].startswith("step 1/10, epoch 0: ")
    export_method(tiny, ExportOptions(out=tmp_path / "out", precision="int8", int8_calibration=frames,
                                      int8_count=2, verify_images=frames, verify_count=2, progress=True))
    out = capsys.readouterr().out
    assert "int8 calibration: 2/2 frames in" in out and "verification: 2/2 frames in" in out


def test_the_cli_keeps_the_int8_rule_that_accepts_a_lower_agreement_at_an_unchanged_miou():
    """`python -m export --precision int8` rebuilt its thresholds field by field and dropped
    max_miou_drop_instead, so a trained trunk model at agreement 0.943 and an mIoU drop of 0.006 failed."""
    from export.__main__ import build_parser, options_from_args
    from export.verify import DEFAULT_THRESHOLDS

    options = options_from_args(build_parser().parse_args(["run", "--precision", "int8"]))
    assert options.thresholds == DEFAULT_THRESHOLDS["int8"] and options.thresholds.max_miou_drop_instead == 0.01
    stricter = options_from_args(build_parser().parse_args(["run", "--precision", "int8", "--min-agreement", "0.99"]))
    assert stricter.thresholds.min_agreement == 0.99 and stricter.thresholds.max_miou_drop_instead == 0.01
