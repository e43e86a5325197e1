"""The ``usseg`` CLI: predict (folder, glob, video), calibrate, bench, info, doctor — run in-process via main()."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import ROOT
from usseg_sdk import Segmenter, SegmenterConfig
from usseg_sdk.backends import ModelFiles
from usseg_sdk.calibrate import write_outputs
from usseg_sdk.cli import main
from usseg_sdk.meta import ModelMeta
from usseg_sdk.rle import read_csv, rows_to_label_map


def write_images(folder, n=3, size=(24, 40), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = {}
    for i in range(n):
        frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"img{i}.png"), frame)
        frames[f"img{i}.png"] = frame
    return frames


def test_predict_folder_writes_labels_overlays_csv_and_jsonl(models, tmp_path, capsys):
    frames = write_images(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    rc = main(["predict", str(tmp_path / "in"), "--model", str(models["grey"].parent), "--out",
               str(tmp_path / "out"), "--device", "cpu", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 3 and "skipped broken.png" in captured.err  # one bad file: the rest still predicted
    assert "3 frames" in captured.out
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu"))
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    records = [json.loads(line) for line in (tmp_path / "out" / "defects.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in records] == sorted(frames)
    for name, frame in frames.items():
        expected = seg.predict(frame)
        labels = cv2.imread(str(tmp_path / "out" / "labels" / name.replace(".png", ".png")), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(labels, expected.labels)
        np.testing.assert_array_equal(rows_to_label_map(rows[name], expected.shape), expected.labels)
        assert (tmp_path / "out" / "overlays" / name.replace(".png", ".jpg")).is_file()
        record = next(r for r in records if r["image_id"] == name)
        assert len(record["defects"]) == len(expected.defects())


def test_predict_glob_and_video(models, tmp_path, capsys):
    write_images(tmp_path / "in", n=2)
    assert main(["predict", str(tmp_path / "in" / "img1.*"), "-m", str(models["grey"]), "-o", str(tmp_path / "g"),
                 "--device", "cpu", "-q", "--no-overlay"]) == 0
    assert [p.name for p in (tmp_path / "g" / "labels").iterdir()] == ["img1.png"]
    assert not (tmp_path / "g" / "overlays").exists()
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 32))
    assert writer.isOpened()
    for i in range(5):
        writer.write(np.full((32, 48, 3), 40 * i, np.uint8))
    writer.release()
    assert main(["predict", str(video), "-m", str(models["rgb_stride4"]), "-o", str(tmp_path / "v"),
                 "--device", "cpu", "-q", "--max-frames", "4"]) == 0
    labels = sorted(p.name for p in (tmp_path / "v" / "labels" / "clip").iterdir())
    assert labels == [f"{i:06d}.png" for i in range(4)]
    assert cv2.imread(str(tmp_path / "v" / "labels" / "clip" / labels[0]), cv2.IMREAD_UNCHANGED).shape == (32, 48)
    ids = [json.loads(x)["image_id"] for x in (tmp_path / "v" / "defects.jsonl").read_text().splitlines()]
    assert ids == [f"clip.avi#{i:06d}" for i in range(4)]
    capsys.readouterr()


def test_predict_bad_source_is_a_clean_error(models, tmp_path, capsys):
    rc = main(["predict", str(tmp_path / "missing"), "-m", str(models["grey"]), "-o", str(tmp_path / "o"),
               "--device", "cpu"])
    assert rc == 2 and "is not a file, folder, glob pattern or camera index" in capsys.readouterr().err
    rc = main(["predict", str(tmp_path), "-m", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_info_and_doctor(models, capsys):
    assert main(["info", str(models["grey"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["meta"]["cluster_to_class"] == [0, 1, 1, 2]
    assert [o["name"] for o in info["outputs"]] == ["clusters", "labels", "scores"]
    assert main(["info", str(models["grey"])]) == 0
    assert "defect_2" in capsys.readouterr().out
    rc = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["onnxruntime"]["providers"] == ort.get_available_providers()
    assert rc == (1 if report["problems"] else 0)
    main(["doctor"])
    assert "providers" in capsys.readouterr().out


def test_bench_tiny(models, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "-m", str(models["grey"]), "--sizes", "16x24,40x40", "--batch-sizes", "1,2",
               "--runs", "2", "--warmup", "1", "--devices", "cpu,cuda", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    ok = [r for r in report["results"] if "error" not in r]
    assert [(r["size"], r["batch_size"]) for r in ok] == [([16, 24], 1), ([16, 24], 2), ([40, 40], 1), ([40, 40], 2)]
    for r in ok:
        for key in ("end_to_end", "backend_only", "bare_onnxruntime"):
            assert 0 < r[key]["p50_ms"] <= r[key]["p99_ms"] and r[key]["runs"] == 2
    assert any(r["device"] == "cuda" and "usseg-sdk[gpu]" in r["error"] for r in report["results"])
    assert "overhead" in capsys.readouterr().out


@pytest.mark.parametrize("mode, n_classes, perm", [("auto", 4, [2, 0, 3, 1]), ("many_to_one", 3, [0, 2, 2, 1])])
def test_calibrate_recovers_a_known_mapping(models, tmp_path, capsys, mode, n_classes, perm):
    """Masks are a known relabelling of the model's own clusters; calibration must find it exactly."""
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu"))
    frames = write_images(tmp_path / "images", n=4, size=(30, 30))
    (tmp_path / "masks").mkdir()
    for name, frame in frames.items():
        clusters = seg.predict(frame).clusters
        mask = np.asarray(perm, np.uint8)[clusters]
        mask[0, :5] = 255  # ignored pixels
        cv2.imwrite(str(tmp_path / "masks" / name), mask)
    names = ["ok", "scratch", "pit", "rust"][:n_classes]
    (tmp_path / "masks" / "labels.txt").write_text("\n".join(names) + "\n")
    rc = main(["calibrate", "-m", str(models["grey"].parent), "--images", str(tmp_path / "images"), "--masks",
               str(tmp_path / "masks"), "--out", str(tmp_path / "cal"), "--device", "cpu", "--mode", mode])
    out = capsys.readouterr().out
    assert rc == 0 and "pixel accuracy 1.0000" in out and "binary defect IoU 1.0000 (defect vs background)" in out
    new = Segmenter(tmp_path / "cal", config=SegmenterConfig(device="cpu"))
    assert new.meta.cluster_to_class == perm and new.meta.class_names == names
    assert new.meta.mapping.kind == ("hungarian" if mode == "auto" else "many_to_one")
    assert new.meta.mapping.metrics["pixel_accuracy"] == 1.0 and new.meta.mapping.n_images == 4
    assert new.meta.mapping.metrics["binary_defect_iou"] == 1.0
    assert ModelMeta.load(tmp_path / "cal" / "model.json") == new.meta
    frame = frames["img0.png"]
    res = new.predict(frame)
    np.testing.assert_array_equal(res.labels, np.asarray(perm, np.uint8)[res.clusters])  # the graph's Gather
    assert res.scores.shape == (n_classes, 30, 30)
    np.testing.assert_array_equal(res.scores.argmax(0), res.labels)  # scores follow the new classes
    report = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert report["mapping"] == perm


def test_calibrate_without_onnx_package(models, tmp_path, capsys, monkeypatch):
    frames = write_images(tmp_path / "images", n=1, size=(8, 8))
    (tmp_path / "masks").mkdir()
    for name in frames:
        cv2.imwrite(str(tmp_path / "masks" / name), np.zeros((8, 8), np.uint8))
    monkeypatch.setitem(sys.modules, "onnx", None)
    rc = main(["calibrate", "-m", str(models["grey"]), "--images", str(tmp_path / "images"), "--masks",
               str(tmp_path / "masks"), "--out", str(tmp_path / "cal"), "--device", "cpu", "--class-names", "a,b"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs the onnx package" in err and err.rstrip().endswith("pip install onnx")
    assert "export" not in err  # the export extra installs torch; a line needs only onnx


def test_calibrated_engine_gets_a_sidecar_mapping_clusters(models, tmp_path):
    engine = tmp_path / "src" / "model.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"engine bytes")
    meta = ModelMeta.load(models["grey"].parent / "model.json")
    engine_meta = meta.model_copy(update={"outputs": meta.outputs.model_copy(update={"labels": None})})
    written = write_outputs(ModelFiles(engine=engine), tmp_path / "cal", meta, engine_meta)
    assert [p.name for p in written] == ["model.engine", "model.engine.json"]
    assert (tmp_path / "cal" / "model.engine").read_bytes() == b"engine bytes"
    assert ModelMeta.load(tmp_path / "cal" / "model.engine.json").outputs.labels is None


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "usseg_sdk.cli", "--version"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.startswith("usseg-sdk ")
