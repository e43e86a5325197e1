"""usseg predict streams its outputs: a run killed mid-folder leaves one complete row per finished frame in each."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT
from usseg_sdk.rle import read_csv

N_FRAMES = 1500


@pytest.fixture(scope="module")
def many_frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    data = cv2.imencode(".png", frame)[1].tobytes()
    for i in range(N_FRAMES):
        (folder / f"f{i:05d}.png").write_bytes(data)
    return folder


def _start(models, src, out):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "usseg_sdk.cli", "predict", str(src), "-m", str(models["grey"]),
                             "-o", str(out), "--device", "cpu", "--batch-size", "1", "-q"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(path, n, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {n} lines (rc {proc.poll()})")


def _outputs(out):
    """(jsonl ids, frames.csv ids, predictions.csv ids); raises on any torn line."""
    text = (out / "defects.jsonl").read_text()
    assert text.endswith("\n"), "defects.jsonl ends in a partial line"
    jsonl = [json.loads(line)["image_id"] for line in text.splitlines()]
    with open(out / "frames.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "frame_id" and all(len(r) == len(rows[0]) for r in rows)
    assert (out / "frames.csv").read_text().endswith("\n")
    return jsonl, [r[0] for r in rows[1:]], set(read_csv(out / "predictions.csv"))


def test_sigterm_mid_folder_keeps_every_finished_frame_in_every_output(models, many_frames, tmp_path):
    out = tmp_path / "out"
    proc = _start(models, many_frames, out)
    _wait_for_lines(out / "defects.jsonl", 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    jsonl, frames, csv_ids = _outputs(out)
    assert 5 <= len(jsonl) < N_FRAMES
    assert frames == jsonl and len(set(jsonl)) == len(jsonl)
    assert csv_ids <= set(jsonl) and csv_ids  # the random frame has defect regions: rows for every frame
    assert csv_ids == set(jsonl)
    assert sorted(p.stem for p in (out / "labels").iterdir()) == [j.removesuffix(".png") for j in jsonl]
    assert len(list((out / "overlays").iterdir())) == len(jsonl)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == len(jsonl) and summary["stopped_by"] == "SIGTERM"


def test_sigkill_mid_folder_leaves_no_partial_line(models, many_frames, tmp_path):
    out = tmp_path / "out"
    proc = _start(models, many_frames, out)
    _wait_for_lines(out / "defects.jsonl", 5, proc)
    proc.kill()
    proc.communicate(timeout=60)
    jsonl, frames, csv_ids = _outputs(out)  # flushed per frame: complete rows up to the kill
    assert len(jsonl) >= 5 and jsonl == frames[: len(jsonl)] and len(frames) - len(jsonl) <= 1
    assert set(jsonl) <= csv_ids and len(csv_ids - set(jsonl)) <= 1
    labels = [p for p in (out / "labels").iterdir() if not p.name.startswith(".")]  # a temp file may be left
    assert len(labels) >= len(jsonl) and all(cv2.imread(str(p)) is not None for p in labels)  # never half a PNG
