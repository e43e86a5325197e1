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


def _insert_png_chunk(data: bytes, kind: bytes, payload: bytes) -> bytes:
    """``data`` (a PNG) with a chunk inserted right after IHDR."""
    import zlib

    ihdr_end = 8 + 12 + int.from_bytes(data[8:12], "big")
    chunk = len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def test_truncated_files_are_skipped_counted_and_exit_3(models, tmp_path, capsys):
    from tests.conftest import SAMPLE_DIR

    src = tmp_path / "in"
    src.mkdir()
    jpeg = sorted((SAMPLE_DIR / "images").glob("*.jpg"))[0].read_bytes()
    (src / "good.jpg").write_bytes(jpeg)
    (src / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    png = cv2.imencode(".png", _frame(5, (64, 64)))[1].tobytes()
    (src / "cut.png").write_bytes(png[: len(png) - 30])
    out = tmp_path / "out"
    rc = main(["predict", str(src), "-m", str(models["grey"]), "-o", str(out), "--device", "cpu", "-q"])
    captured = capsys.readouterr()
    assert rc == 3, captured.err
    assert "skipped cut.jpg: truncated JPEG" in captured.err and "skipped cut.png: truncated PNG" in captured.err
    assert "1 frames" in captured.out and "2 skipped" in captured.out
    assert _jsonl_ids(out) == ["good.jpg"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 1 and summary["skipped"] == 2
    assert sorted(s["frame_id"] for s in summary["skipped_frames"]) == ["cut.jpg", "cut.png"]


def test_16_bit_frames_are_scaled_by_their_bit_depth(models, tmp_path, capsys, caplog):
    frame8 = _frame(6, (32, 32))
    frame8[0, 0] = 255
    frame12 = np.rint(frame8.astype(np.float64) * 4095 / 255).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "f12.png"), frame12)
    dark = frame12 // 8  # a dark 12-bit frame (max 511): only --max-value can tell its depth
    cv2.imwrite(str(src / "dark.png"), dark)
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu"))
    out = tmp_path / "out"
    assert main(["predict", str(src / "f12.png"), "-m", str(models["grey"]), "-o", str(out), "--device", "cpu",
                 "-q"]) == 0
    assert "scaled by 4095 -> 255 (12-bit" in caplog.text
    got = cv2.imread(str(out / "labels" / "f12.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(got, seg.predict(frame8).labels)
    assert main(["predict", str(src / "dark.png"), "-m", str(models["grey"]), "-o", str(tmp_path / "d"),
                 "--device", "cpu", "-q", "--max-value", "4095"]) == 0
    got = cv2.imread(str(tmp_path / "d" / "labels" / "dark.png"), cv2.IMREAD_UNCHANGED)
    expected = np.rint(dark.astype(np.float64) * 255 / 4095).astype(np.uint8)
    np.testing.assert_array_equal(got, seg.predict(expected).labels)
    capsys.readouterr()


def test_png_sbit_gives_the_bit_depth(tmp_path):
    from usseg_sdk.image_file import read_frame_file

    dark = np.full((8, 8), 300, np.uint16)
    dark[0, 0] = 1000
    data = cv2.imencode(".png", dark)[1].tobytes()
    (tmp_path / "plain.png").write_bytes(data)
    (tmp_path / "sbit.png").write_bytes(_insert_png_chunk(data, b"sBIT", bytes([12])))
    frame, top = read_frame_file(tmp_path / "plain.png", channels=1)
    assert top == 1023 and frame.dtype == np.uint8 and int(frame.max()) == 249  # inferred: 10-bit
    frame, top = read_frame_file(tmp_path / "sbit.png", channels=1)
    assert top == 4095 and int(frame.max()) == round(1000 * 255 / 4095)
    frame, top = read_frame_file(tmp_path / "sbit.png", channels=1, max_value=65535)  # the caller wins
    assert top == 65535 and int(frame.max()) == 4


def test_output_folder_that_is_a_file_or_unwritable_is_a_clean_error(models, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "f.png"), _frame(7))
    (tmp_path / "taken").write_text("a file")
    for out, message in [(tmp_path / "taken", "is a file"), (tmp_path / "taken" / "sub", "cannot create")]:
        rc = main(["predict", str(tmp_path / "f.png"), "-m", str(models["grey"]), "-o", str(out), "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, err
        assert err.startswith("usseg predict: error: output folder") or "cannot create output folder" in err


def test_read_only_output_folder_is_a_clean_error(models, tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        import pytest

        pytest.skip("root writes into read-only folders")
    cv2.imwrite(str(tmp_path / "f.png"), _frame(7))
    (tmp_path / "ro").mkdir(mode=0o555)
    rc = main(["predict", str(tmp_path / "f.png"), "-m", str(models["grey"]), "-o", str(tmp_path / "ro"),
               "--device", "cpu"])
    assert rc == 2 and "is not writable" in capsys.readouterr().err


def test_min_area_filters_every_output_alike(models, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "f.png"), _frame(8, (48, 64)))
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu"))
    areas = sorted(d.area for d in seg.predict(_frame(8, (48, 64))).defects())
    min_area = areas[-1]  # keeps only the largest region(s)
    assert areas[0] < min_area
    out = tmp_path / "out"
    assert main(["predict", str(src), "-m", str(models["grey"]), "-o", str(out), "--device", "cpu", "-q",
                 "--min-area", str(min_area)]) == 0
    capsys.readouterr()
    record = json.loads((out / "defects.jsonl").read_text())
    kept = [d["area"] for d in record["defects"]]
    assert kept and min(kept) >= min_area and len(kept) < len(areas)
    labels = cv2.imread(str(out / "labels" / "f.png"), cv2.IMREAD_UNCHANGED)
    from usseg_sdk.rle import rows_to_label_map

    rows = read_csv(out / "predictions.csv")["f.png"]
    np.testing.assert_array_equal(rows_to_label_map(rows, labels.shape), labels)  # CSV == label PNG
    assert int((labels != 0).sum()) == sum(kept)  # no pixel of a dropped region left in either
    assert int(_frames_csv(out)[0]["defect_px"]) == sum(kept)


def test_fail_area_gives_a_verdict_per_frame_and_a_summary(models, tmp_path, capsys):
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu"))
    src = tmp_path / "in"
    src.mkdir()
    worst = {}
    for i in range(4):
        frame = _frame(20 + i, (24 + 8 * i, 32))
        cv2.imwrite(str(src / f"f{i}.png"), frame)
        areas = {}
        for d in seg.predict(frame).defects():
            areas[d.class_name] = areas.get(d.class_name, 0) + d.area
        worst[f"f{i}.png"] = max(areas.values())
    (src / "broken.png").write_bytes(b"not a png")
    limit = sorted(worst.values())[1]  # frames with a class above it fail
    out = tmp_path / "out"
    rc = main(["predict", str(src), "-m", str(models["grey"]), "-o", str(out), "--device", "cpu", "-q",
               "--fail-area", str(limit)])
    printed = capsys.readouterr().out
    expected = {name: "fail" if area > limit else "pass" for name, area in worst.items()}
    n_fail = sum(v == "fail" for v in expected.values())
    assert 0 < n_fail < 4 and rc == 3  # one file skipped
    assert {r["frame_id"]: r["verdict"] for r in _frames_csv(out)} == expected
    assert all(r["reasons"] == "" for r in _frames_csv(out) if r["verdict"] == "pass")
    assert all(f"px > {limit} px" in r["reasons"] for r in _frames_csv(out) if r["verdict"] == "fail")
    records = {json.loads(x)["image_id"]: json.loads(x) for x in (out / "defects.jsonl").read_text().splitlines()}
    assert {k: r["verdict"] for k, r in records.items()} == expected
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (4 - n_fail, n_fail, 1)
    assert summary["rule"]["default"] == limit
    assert f"4 frames: {4 - n_fail} pass, {n_fail} fail, 1 skipped" in printed
    rc = main(["predict", str(src), "-m", str(models["grey"]), "-o", str(tmp_path / "o2"), "--device", "cpu", "-q",
               "--fail-area", "defect_1=10,rust=5"])
    assert rc == 2 and "unknown classes ['rust']" in capsys.readouterr().err


def _video(path, n=6, size=(32, 48), fps=7):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    for i in range(n):
        writer.write(np.full((*size, 3), 30 * i, np.uint8))
    writer.release()
    return path


def test_video_out_writes_the_overlays_as_a_video(models, tmp_path, capsys):
    video = _video(tmp_path / "clip.avi")
    out = tmp_path / "out"
    assert main(["predict", str(video), "-m", str(models["rgb_stride4"]), "-o", str(out), "--device", "cpu", "-q",
                 "--video-out", str(out / "annotated.avi")]) == 0
    capsys.readouterr()
    cap = cv2.VideoCapture(str(out / "annotated.avi"))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    assert len(frames) == 6 and frames[0].shape == (32, 48, 3) and round(fps) == 7
    rc = main(["predict", str(video), "-m", str(models["rgb_stride4"]), "-o", str(tmp_path / "o2"), "--device",
               "cpu", "-q", "--video-out", str(tmp_path / "a.gif")])
    assert rc == 2 and "unknown video type" in capsys.readouterr().err


def test_predict_source_streams_folders_globs_videos_and_iterables(models, tmp_path):
    import itertools

    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu", batch_size=2))
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    frames = {"a/f1.png": _frame(30), "f2.png": _frame(31), "f2_mask.png": _frame(32)}
    for rel, frame in frames.items():
        cv2.imwrite(str(src / rel), frame)
    (src / "cut.png").write_bytes(cv2.imencode(".png", _frame(33))[1].tobytes()[:-30])
    errors = []
    got = dict(seg.predict_source(src, recursive=True, on_error=lambda i, r: errors.append((i, r))))
    assert sorted(got) == ["a/f1.png", "f2.png"] and errors[0][0] == "cut.png" and "truncated" in errors[0][1]
    for rel, res in got.items():
        np.testing.assert_array_equal(res.labels, seg.predict(frames[rel]).labels)
    assert [i for i, _ in seg.predict_source(str(src / "*.png"))] == ["f2.png"]  # cut.png logged and skipped
    video = _video(tmp_path / "clip.avi")
    ids = [i for i, r in seg.predict_source(video, max_frames=3)]
    assert ids == ["clip.avi#000000", "clip.avi#000001", "clip.avi#000002"]

    def endless():
        for n in itertools.count():
            yield f"cam#{n}", _frame(n % 3)

    first = list(itertools.islice(seg.predict_source(endless()), 5))  # streams: an endless source is fine
    assert [i for i, _ in first] == [f"cam#{n}" for n in range(5)]
    np.testing.assert_array_equal(first[4][1].labels, seg.predict(_frame(1)).labels)


def test_progress_writes_lines_without_a_terminal_and_rewrites_one_on_a_terminal():
    """A log file gets whole lines (every interval and the final count), never carriage returns; a terminal one
    line rewritten in place."""
    import io

    from usseg_sdk.cli.predict import Progress

    log = io.StringIO()
    progress = Progress(3, "usseg predict", stream=log, interval_s=3600)
    for _ in range(3):
        progress.update()
    progress.close()
    assert "\r" not in log.getvalue()
    assert len(log.getvalue().splitlines()) == 1  # the final count; the interval never passed
    assert log.getvalue().startswith("usseg predict: 3/3 frames, ")
    unknown = io.StringIO()
    stream = Progress(None, "usseg predict", stream=unknown, interval_s=3600)  # a video: no total
    stream.update()
    stream.update()
    stream.close()
    assert unknown.getvalue().startswith("usseg predict: 2 frames, ") and unknown.getvalue().endswith("\n")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    on_terminal = Progress(2, "usseg predict", stream=tty)
    on_terminal.update()
    on_terminal.update()
    on_terminal.close()
    assert tty.getvalue().startswith("\russeg predict: ") and tty.getvalue().endswith("\n")
