"""`make demo` (demo/run.py): every stage on a few training steps, the outputs a user opens, the settings."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest

from demo.panels import panel_size
from demo.run import OUTPUTS, clear_outputs, run_demo
from demo.settings import DEFAULT_CAP_S, DEFAULT_METHOD, METHODS, DemoError, DemoSettings
from demo.summary import render_summary
from demo.training_run import TrainingOutcome
from tests.conftest import ROOT, SAMPLE_DIR
from usseg_sdk import Segmenter
from usseg_sdk.rle import read_csv, rows_to_label_map


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """The whole demo with IIC for 3 optimiser steps (the pipeline, not the accuracy, is under test)."""
    out = tmp_path_factory.mktemp("demo_out")
    settings = DemoSettings.from_env({"DEMO_METHOD": "iic", "DEMO_STEPS": "3", "DEMO_CAP_S": "60",
                                      "DEMO_OUT": str(out)})
    return out, run_demo(settings, progress=False)


def test_demo_writes_every_output(tiny_demo):
    out, report = tiny_demo
    holdout = json.loads((SAMPLE_DIR / "splits.json").read_text())["holdout"]
    for name in ("model/model.onnx", "model/model.json", "model/verify.json", "run/config.yaml", "defects.jsonl",
                 "summary.txt", "calibration/labels.txt"):
        assert (out / name).is_file(), name
    assert sorted(p.stem for p in (out / "overlays").glob("*.png")) == sorted(holdout)
    assert sorted(p.stem for p in (out / "predictions").glob("*.png")) == sorted(holdout)
    assert sorted(p.stem for p in (out / "calibration" / "images").iterdir()) == \
        sorted(json.loads((SAMPLE_DIR / "splits.json").read_text())["calibration"])
    assert report["training"]["steps"] == 3 and report["training"]["stopped"] == "max_steps"
    assert report["training"]["cap_hit"] is False and report["training"]["cap_s"] == 60
    assert json.loads((out / "model" / "verify.json").read_text())["passed"] is True


def test_metrics_match_the_written_predictions(tiny_demo):
    """metrics.json is recomputed here from predictions/*.png and the sample's masks."""
    out, _ = tiny_demo
    metrics = json.loads((out / "metrics.json").read_text())
    n = len(metrics["class_names"])
    confusion = np.zeros((n, n), np.int64)
    for ident in metrics["images"]:
        pred = cv2.imread(str(out / "predictions" / f"{ident}.png"), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(str(SAMPLE_DIR / "masks" / f"{ident}.png"), cv2.IMREAD_UNCHANGED)
        assert pred.shape == gt.shape and pred.dtype == np.uint8
        np.add.at(confusion, (pred.ravel(), gt.ravel()), 1)
    assert metrics["confusion"] == confusion.tolist()
    assert metrics["pixel_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    tp = np.diag(confusion)
    iou = tp / (confusion.sum(0) + confusion.sum(1) - tp)
    for name, value in zip(metrics["class_names"], iou, strict=True):
        got = metrics["per_class"][name]["iou"]
        assert (got is None and np.isnan(value)) or got == pytest.approx(value)
    assert set(metrics["baseline_kmeans"]) >= {"pixel_accuracy", "miou", "defect_iou", "mapping"}


def test_rle_and_defects_agree_with_the_label_maps(tiny_demo):
    out, _ = tiny_demo
    rows = read_csv(out / "predictions.csv")
    for line in (out / "defects.jsonl").read_text().splitlines():
        entry = json.loads(line)
        labels = cv2.imread(str(out / "predictions" / f"{entry['image_id']}.png"), cv2.IMREAD_UNCHANGED)
        decoded = rows_to_label_map(rows.get(entry["image_id"], []), labels.shape)
        assert np.array_equal(decoded, labels)  # background is class 0, never written
        assert entry["class_areas"]["background"] == int((labels == 0).sum())
        assert all(d["area"] >= 20 and d["class_name"] != "background" for d in entry["defects"])


def test_overlays_are_large_side_by_side_pictures(tiny_demo):
    out, _ = tiny_demo
    for path in (out / "overlays").glob("*.png"):
        frame = cv2.imread(str(SAMPLE_DIR / "images" / f"{path.stem}.jpg"), cv2.IMREAD_COLOR)
        picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert picture.shape[:2] == panel_size(frame.shape[:2], 2)
        assert picture.shape[1] >= 3 * 2 * frame.shape[1]
        # The ground-truth panel paints the masked defects: some of its pixels differ from the plain frame.
        mask = cv2.imread(str(SAMPLE_DIR / "masks" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        h, w = frame.shape[:2]
        top = panel_size(frame.shape[:2], 2)[0] - 2 * h - 40  # below the title bar
        plain = picture[top:top + 2 * h:2, 0:2 * w:2]
        gt = picture[top:top + 2 * h:2, 2 * w + 6:4 * w + 6:2]
        changed = np.abs(plain.astype(int) - gt.astype(int)).sum(-1) > 0
        assert changed[mask > 0].mean() > 0.9 and changed[mask == 0].mean() < 0.1


def test_exported_model_reproduces_the_predictions(tiny_demo):
    out, _ = tiny_demo
    ident = json.loads((out / "metrics.json").read_text())["images"][0]
    with Segmenter(out / "model", device="cpu") as seg:
        labels = seg.predict(cv2.imread(str(SAMPLE_DIR / "images" / f"{ident}.jpg"))).labels
    assert np.array_equal(labels, cv2.imread(str(out / "predictions" / f"{ident}.png"), cv2.IMREAD_UNCHANGED))


def test_summary_names_the_numbers_and_next_commands(tiny_demo):
    out, report = tiny_demo
    text = (out / "summary.txt").read_text()
    assert text.strip() == render_summary(report)
    assert len(text.splitlines()) <= 40  # one screen
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{100 * metrics['miou']:.1f}" in text and f"{100 * metrics['baseline_kmeans']['miou']:.1f}" in text
    for command in ("usseg predict", "python -m training fit", "python -m export"):
        assert command in text


def test_a_new_run_removes_only_the_demos_own_outputs(tmp_path):
    for name in OUTPUTS:
        if "." in name:
            (tmp_path / name).write_text("old")
        else:
            (tmp_path / name / "sub").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "mine").mkdir()
    clear_outputs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DemoError, match="not a folder"):
        clear_outputs(tmp_path / "file")


def test_settings_from_the_environment(tmp_path):
    s = DemoSettings.from_env({})
    assert s.method == DEFAULT_METHOD and s.preset == METHODS[DEFAULT_METHOD].preset
    assert (s.steps, s.cap_s) == (METHODS[DEFAULT_METHOD].steps, DEFAULT_CAP_S) == (280, 900.0)  # README's run
    s = DemoSettings.from_env({"DEMO_METHOD": "PiCIE", "DEMO_PRESET": "my.yaml", "DEMO_CAP_S": "30",
                               "DEMO_STEPS": "0", "DEMO_OUT": str(tmp_path)})
    assert (s.method, s.preset, s.cap_s, s.steps, s.out) == ("picie", "my.yaml", 30.0, None, tmp_path)
    for env, needle in (({"DEMO_METHOD": "sam"}, "iic, ac, infoseg, picie"), ({"DEMO_CAP_S": "abc"}, "number"),
                        ({"DEMO_CAP_S": "0"}, "positive"), ({"DEMO_HEAD": "aux"}, "main, over"),
                        ({"DEMO_BUDGET_S": "120"}, "DEMO_BUDGET_S is gone.*DEMO_STEPS.*280")):
        with pytest.raises(DemoError, match=needle):
            DemoSettings.from_env(env)
    assert replace(s, seed=3).seed == 3


def test_a_run_the_time_cap_stopped_is_loud_and_exits_3(tiny_demo, monkeypatch, capsys):
    out, report = tiny_demo
    config = {"train": {"max_steps": 280}}
    capped = TrainingOutcome(out / "run", config, steps=127, epochs=31, stopped="time_budget", train_s=900, wall_s=910)
    assert capped.cap_hit and not replace(capped, stopped="max_steps").cap_hit
    assert not replace(capped, config={"train": {"max_steps": None}}).cap_hit  # DEMO_STEPS=0: the cap is the budget
    hit = {**report, "training": {**report["training"], "steps": 127, "max_steps": 280, "cap_s": 900.0,
                                  "cap_hit": True}}
    text = render_summary(hit)
    assert "TIME CAP HIT" in text and "127 of 280 steps" in text and "NOT match README" in text
    assert len(text.splitlines()) <= 40 and "CAP HIT" not in render_summary(report)

    import demo.run

    monkeypatch.setattr(demo.run, "run_demo", lambda settings: hit)
    monkeypatch.setenv("DEMO_OUT", str(out))
    assert demo.run.main() == 3
    assert "TIME CAP HIT" in capsys.readouterr().err
    monkeypatch.setattr(demo.run, "run_demo", lambda settings: report)
    assert demo.run.main() == 0


@pytest.mark.parametrize(("env", "needle"), [({"DEMO_METHOD": "nope"}, "DEMO_METHOD='nope'"),
                                           ({"DEMO_PRESET": "no_such_preset"}, "no_such_preset"),
                                           ({"DEMO_METHOD": "infoseg", "DEMO_HEAD": "over"}, "has the head(s) main")])
def test_bad_settings_exit_2_with_a_clear_message(tmp_path, env, needle):
    done = subprocess.run([sys.executable, str(ROOT / "demo" / "run.py")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "DEMO_OUT": str(tmp_path), **env}, timeout=120)
    assert done.returncode == 2
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # nothing trained


def test_the_anomaly_method_runs_through_the_demo(tmp_path):
    """DEMO_METHOD=anomaly: the bank is fitted at the first epoch start, its steps change nothing; export verifies."""
    settings = DemoSettings.from_env({"DEMO_METHOD": "anomaly", "DEMO_OUT": str(tmp_path)})
    report = run_demo(settings, progress=False)
    assert report["training"]["steps"] == METHODS["anomaly"].steps and report["training"]["preset"] == "anomaly_cpu"
    assert json.loads((tmp_path / "model" / "verify.json").read_text())["passed"]
    assert 0 < report["metrics"]["miou"] <= 1


@pytest.mark.slow
def test_full_demo_beats_the_kmeans_baseline(tmp_path):
    """The default demo, all its steps (the default cap): above the k-means baseline on mIoU and defect IoU."""
    settings = replace(DemoSettings.from_env({}), out=tmp_path)
    report = run_demo(settings, progress=False)
    assert report["training"]["steps"] == settings.steps
    for key in ("miou", "defect_iou"):
        assert report["metrics"][key] > report["baseline"][key]
