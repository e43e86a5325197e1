"""deploy/line_example.py: decisions, outputs, and a clean stop on SIGTERM that loses no processed frame."""

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, SAMPLE_DIR
from usseg_sdk import verdict

pytest.importorskip("onnxruntime")
onnx_models = pytest.importorskip("tests.sdk.onnx_models", reason="needs the onnx package")

spec = importlib.util.spec_from_file_location("line_example", ROOT / "deploy" / "line_example.py")
line_example = importlib.util.module_from_spec(spec)
sys.modules["line_example"] = line_example
spec.loader.exec_module(line_example)

CLASSES = ["background", "inclusion", "patches", "scratches"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("line") / "export" / "model.onnx"
    onnx_models.build_model(path, n_clusters=4, cluster_to_class=[0, 1, 2, 3], class_names=CLASSES, scores=True)
    return path.parent


class FakeResult:
    def __init__(self, regions):
        self.regions = regions

    def defects(self, min_area=0):
        return [r for r in self.regions if r.area >= min_area]


class Region:
    def __init__(self, name, area):
        self.class_name, self.area = name, area


def test_decide_sums_regions_above_min_region_per_class():
    result = FakeResult([Region("scratches", 30), Region("scratches", 25), Region("patches", 5)])
    d, regions = verdict.decide(result, verdict.parse_area_limits(["scratches=50"], min_region=10))
    assert [r.area for r in regions] == [30, 25]
    assert not d.passed and d.areas == {"scratches": 55} and d.reasons == ["scratches: 55 px > 50 px"]
    d, _ = verdict.decide(result, verdict.parse_area_limits(["scratches=60"], min_region=10))
    assert d.passed and d.reasons == [] and d.label == "pass"
    d, _ = verdict.decide(result, verdict.parse_area_limits(["scratches=60"], min_region=1))  # the patch counts
    assert not d.passed and d.reasons == ["patches: 5 px > 0 px"]
    d, _ = verdict.decide(result, verdict.parse_area_limits(["60"], min_region=1))  # a bare number: every class
    assert d.passed


def test_line_example_decides_with_the_sdk_rule():
    """One decision in one place: the line example and usseg predict share usseg_sdk.verdict."""
    assert line_example.decide is verdict.decide and line_example.parse_area_limits is verdict.parse_area_limits
    assert not hasattr(line_example, "Decision") and not hasattr(line_example, "parse_max_area")


def test_area_limits_are_parsed_or_refused():
    rule = verdict.parse_area_limits(["scratches=50,patches=200", "inclusion=7"])
    assert rule.limits == {"scratches": 50, "patches": 200, "inclusion": 7} and rule.default == 0
    for bad in ("scratches", "scratches=", "=5", "scratches=-1", "scratches=1.5"):
        with pytest.raises(verdict.VerdictRuleError, match="CLASS=PIXELS"):
            verdict.parse_area_limits([bad])
    with pytest.raises(verdict.VerdictRuleError, match=r"unknown classes \['rust'\]"):
        verdict.parse_area_limits(["rust=5"]).check_classes(CLASSES)


def run(args, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "deploy" / "line_example.py"), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_once_writes_a_line_per_frame_and_overlays_for_rejects(model_dir, tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    frames = sorted(SAMPLE_DIR.glob("images/*.jpg"))[:5]
    for f in frames:
        shutil.copy(f, incoming / f.name)
    (incoming / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    proc = run(["--model", model_dir, "--watch", incoming, "--out", out, "--once", "--max-area", "patches=1000000",
                "--max-area", "scratches=1000000", "--max-area", "inclusion=1000000"])
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(x["frame"] for x in lines) == sorted(f.name for f in frames)
    assert "cannot read" in log and "broken.png" in log
    failed = {x["frame"] for x in lines if x["decision"] == "fail"}
    assert {p.stem for p in (out / "rejects").glob("*.png")} == {f.rsplit(".", 1)[0] for f in failed}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 5 and summary["passed"] + summary["failed"] == 5


def test_unknown_class_in_rule_is_refused(model_dir, tmp_path):
    proc = run(["--model", model_dir, "--watch", tmp_path, "--out", tmp_path / "o", "--max-area", "rust=5"])
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "unknown classes ['rust']" in log


def test_sigterm_finishes_queued_frames_and_exits_cleanly(model_dir, tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    out = tmp_path / "out"
    proc = run(["--model", model_dir, "--watch", incoming, "--out", out])
    frames = sorted(SAMPLE_DIR.glob("images/*.jpg"))[:12]
    for f in frames:  # frames arrive while the line runs
        shutil.copy(f, incoming / f.name)
    deadline = time.monotonic() + 60
    results = out / "results.jsonl"
    while time.monotonic() < deadline and (not results.exists() or not results.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, log
    lines = results.read_text().splitlines()
    assert all(json.loads(x)["frame"].endswith(".jpg") for x in lines)  # no torn line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by_signal"] is True
    assert summary["frames"] == len(lines) >= 1  # every frame taken off the queue has its result line
    assert "finishing the queued frames" in log
    assert np.all([json.loads(x)["decision"] in ("pass", "fail") for x in lines])


def test_truncated_frame_is_skipped_not_judged(model_dir, tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    jpeg = sorted(SAMPLE_DIR.glob("images/*.jpg"))[0].read_bytes()
    (incoming / "good.jpg").write_bytes(jpeg)
    (incoming / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    out = tmp_path / "out"
    proc = run(["--model", model_dir, "--watch", incoming, "--out", out, "--once"])
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log
    assert "truncated JPEG" in log and "cut.jpg" in log
    assert [json.loads(x)["frame"] for x in (out / "results.jsonl").read_text().splitlines()] == ["good.jpg"]
