"""usseg predict on real-world folders: unique outputs per frame, masks and other files left out, damaged and
16-bit input, output-folder errors, verdicts and the run summary."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np

from usseg_sdk import Segmenter, SegmenterConfig
from usseg_sdk.cli import main
from usseg_sdk.rle import read_csv


def _frame(seed, size=(24, 32)):
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def _jsonl_ids(out):
    return [json.loads(x)["image_id"] for x in (out / "defects.jsonl").read_text().splitlines()]


def _frames_csv(out):
    with open(out / "frames.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_recursive_outputs_mirror_relative_paths(models, tmp_path, capsys):
    src, frames = tmp_path / "in", {}
    for i, rel in enumerate(["a/f1.png", "b/f1.png", "a/f2.png", "b/f2.png", "b/f2.jpg"]):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        frames[rel] = _frame(i)
        cv2.imwrite(str(src / rel), frames[rel], [cv2.IMWRITE_JPEG_QUALITY, 100])
        frames[rel] = cv2.imread(str(src / rel), cv2.IMREAD_GRAYSCALE)  # what predict reads (jpeg is lossy)
    out = tmp_path / "out"
    assert main(["predict", str(src), "-m", str(models["grey"]), "-o", str(out), "--device", "cpu", "-q",
                 "--recursive"]) == 0
    capsys.readouterr()
    ids = _jsonl_ids(out)
    assert sorted(ids) == sorted(frames) and len(set(ids)) == 5
    assert [r["frame_id"] for r in _frames_csv(out)] == ids
    assert set(read_csv(out / "predictions.csv")) <= set(frames)
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu"))
    labels = sorted(p.relative_to(out / "labels").as_posix() for p in (out / "labels").rglob("*.png"))
    assert labels == ["a/f1.png", "a/f2.png", "b/f1.png", "b/f2.png", "b/f2_png.png"]  # f2.jpg came first
    for rel, name in [("a/f1.png", "a/f1.png"), ("b/f1.png", "b/f1.png"), ("b/f2.jpg", "b/f2.png"),
                      ("b/f2.png", "b/f2_png.png")]:
        got = cv2.imread(str(out / "labels" / name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(got, seg.predict(frames[rel]).labels, err_msg=rel)
    assert len(list((out / "overlays").rglob("*.jpg"))) == 5


def test_glob_ids_are_relative_to_the_glob_folder(models, tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "in" / sub / "f1.png"), _frame(1))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in" / "*" / "f1.png"), "-m", str(models["grey"]), "-o", str(out),
                 "--device", "cpu", "-q", "--no-overlay"]) == 0
    capsys.readouterr()
    assert _jsonl_ids(out) == ["a/f1.png", "b/f1.png"]
    assert sorted(p.relative_to(out).as_posix() for p in (out / "labels").rglob("*.png")) == \
        ["labels/a/f1.png", "labels/b/f1.png"]


def test_masks_beside_frames_are_not_predicted_and_ext_filters(models, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "masks").mkdir(parents=True)
    frame = _frame(3)
    cv2.imwrite(str(src / "f1.png"), frame)
    mask = np.zeros_like(frame)
    mask[4:10, 4:10] = 255
    for name in ("f1_mask.png", "f1-GT.png", "masks/f1.png"):
        cv2.imwrite(str(src / name), mask)
    cv2.imwrite(str(src / "f2.jpg"), _frame(4))
    (src / "notes.txt").write_text("not a frame")
    (src / ".hidden.png").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["predict", str(src), "-m", str(models["grey"]), "-o", str(out), "--device", "cpu", "-q",
                 "--recursive"]) == 0
    assert "left out 3 label map(s)" in capsys.readouterr().err
    assert _jsonl_ids(out) == ["f1.png", "f2.jpg"]
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu"))
    np.testing.assert_array_equal(cv2.imread(str(out / "labels" / "f1.png"), cv2.IMREAD_UNCHANGED),
                                  seg.predict(frame).labels)  # the frame's outputs, not its mask's
    assert main(["predict", str(src), "-m", str(models["grey"]), "-o", str(tmp_path / "png"), "--device", "cpu",
                 "-q", "--ext", "PNG"]) == 0
    assert _jsonl_ids(tmp_path / "png") == ["f1.png"]
    assert main(["predict", str(src / "masks"), "-m", str(models["grey"]), "-o", str(tmp_path / "m"), "--device",
                 "cpu", "-q"]) == 0  # pointing at a masks folder reads it
    assert _jsonl_ids(tmp_path / "m") == ["f1.png"]
    capsys.readouterr()


def test_training_folder_dataset_shares_the_mask_rule():
    from training.data import folder
    from usseg_sdk import masks

    assert folder.is_mask_name is masks.is_mask_name and folder.FolderConfig().exclude_dirs == masks.MASK_FOLDERS
    assert folder.FolderConfig().mask_suffixes == masks.MASK_SUFFIXES
