"""benchmarks/accuracy/: eval subsets, protocol scoring, step budgets and the wall-clock cap, one budgeted run on the
bundled sample, resume-skip."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from benchmarks.accuracy import cli, data, records, report, runner, scoring
from benchmarks.accuracy.rows import ROW_STEPS
from benchmarks.accuracy.settings import Settings
from benchmarks.datasets import NEU_CLASSES
from tests.conftest import SAMPLE_DIR
from training.engine import FitResult
from training.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample_settings(sample_dir: Path, steps: int = 3, **kw) -> Settings:
    return Settings(eval_limit=None, data_root=str(sample_dir), budget_steps=(("iic", steps),),
                    cap_s=kw.pop("cap_s", 60.0), split_file=str(sample_dir / "splits.json"), eval_split="holdout",
                    tuning_subset=kw.pop("tuning_subset", 5), baseline_fit_images=8, **kw)


@pytest.fixture(scope="module")
def tiny_sample(tmp_path_factory):
    """The bundled sample made small for a fast whole run: 16 train frames (2 of them calibration) and 3 holdout
    frames, every frame and mask resized to 64x64 (IIC's crop)."""
    root = tmp_path_factory.mktemp("tiny_sample")
    splits = json.loads((SAMPLE_DIR / "splits.json").read_text())
    calibration = splits["calibration"][:2]
    train = calibration + [i for i in splits["train"] if i not in calibration][:14]
    holdout = splits["holdout"][:3]
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for image_id in train + holdout:
        image = cv2.imread(str(SAMPLE_DIR / "images" / f"{image_id}.jpg"), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(SAMPLE_DIR / "masks" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(root / "images" / f"{image_id}.jpg"), cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA))
        cv2.imwrite(str(root / "masks" / f"{image_id}.png"), cv2.resize(mask, (64, 64),
                                                                                interpolation=cv2.INTER_NEAREST))
    (root / "splits.json").write_text(json.dumps({"train": train, "calibration": calibration, "holdout": holdout}))
    return root


def test_eval_subset_is_fixed_sorted_and_nested_in_the_split():
    ids = [f"{i:06d}" for i in range(50, 0, -1)]
    a, b = data.eval_subset(ids, 10), data.eval_subset(list(reversed(ids)), 10)
    assert a == b == sorted(a) and len(set(a)) == 10 and set(a) <= set(ids)
    assert data.eval_subset(ids, None) == sorted(ids) == data.eval_subset(ids, 80)
    assert a != sorted(ids)[:10]  # a random subset, not the first ids


def test_eval_parts_split_tuning_from_untouched(sample_dir):
    parts = data.eval_parts(sample_settings(sample_dir))
    holdout = json.loads((sample_dir / "splits.json").read_text())["holdout"]
    assert len(parts["eval_tuning"]) == 5 and len(parts["eval_untouched"]) == len(holdout) - 5
    assert sorted(parts["eval_tuning"] + parts["eval_untouched"]) == sorted(holdout)
    limited = data.eval_parts(Settings(**{**sample_settings(sample_dir).__dict__, "eval_limit": 3}))
    assert list(limited) == ["eval_tuning"] and len(limited["eval_tuning"]) == 3


def test_protocols_pick_hungarian_main_and_calibrated_over_head():
    # main head: 4 clusters, cluster i is class (i + 1) % 4 on eval; over head: 6 clusters
    main = np.diag([800, 30, 50, 20])[[1, 2, 3, 0]]  # cluster 0 -> class 1, ..., cluster 3 -> class 0
    over = np.zeros((6, 4), dtype=np.int64)
    over[0, 0], over[1, 0], over[2, 1], over[3, 2], over[4, 3], over[5, 0] = 400, 400, 30, 50, 20, 1
    calib_over = over.copy()
    calib_over[5] = [0, 9, 0, 0]  # calibration maps cluster 5 to inclusion: a wrong name on eval
    heads = scoring.score_heads({"main": main, "over": over}, {"main": main, "over": calib_over}, NEU_CLASSES)
    protos = scoring.protocols(heads)
    assert protos["a"]["head"] == "main" and protos["a"]["miou"] == pytest.approx(1.0)
    assert heads["main"]["same_images"]["mapping"] == [1, 2, 3, 0]
    b = protos["b"]
    assert b["head"] == "over" and b["k"] == 6 and b["mapping"] == "many_to_one/calibration"
    assert heads["over"]["calibration"]["mapping"] == [0, 0, 1, 2, 3, 1]
    assert b["iou"]["inclusion"] == pytest.approx(30 / 31) and b["iou"]["background"] == pytest.approx(800 / 801)
    assert heads["over"]["same_images"]["miou"] == pytest.approx(1.0)


def test_main_head_without_k4_has_no_protocol_a():
    heads = scoring.score_heads({"main": np.eye(6, 4, dtype=np.int64) * 10}, {"main": np.eye(6, 4, dtype=np.int64)},
                                NEU_CLASSES)
    protos = scoring.protocols(heads)
    assert protos["a"] is None and protos["b"]["head"] == "main" and protos["b"]["k"] == 6


def test_method_config_sets_splits_budget_seed_and_overrides(sample_dir):
    settings = sample_settings(sample_dir, steps=11, cap_s=7.0)
    config = runner.method_config("iic", 3, settings, {"method_config.lamb_B": 0.5})
    assert config["data"]["train"]["split"] == "train" and config["data"]["train"]["masks_dir"] is None
    calibration = json.loads((sample_dir / "splits.json").read_text())["calibration"]
    assert sorted(config["data"]["eval"]["ids"]) == sorted(calibration)
    assert config["train"]["max_steps"] == 11 and config["train"]["time_budget_s"] == 7.0
    assert config["train"]["seed"] == 3 and config["train"]["epochs"] >= 100_000  # the step budget stops it
    unbudgeted = runner.method_config("iic", 3, sample_settings(sample_dir, steps=0, cap_s=7.0))
    assert unbudgeted["train"]["max_steps"] is None  # 0: the cap alone, the old wall-clock budget
    assert config["method_config"]["lamb_B"] == 0.5


def test_one_budgeted_run_writes_the_schema_and_a_rerun_skips(tiny_sample, tmp_path, monkeypatch):
    settings = sample_settings(tiny_sample, steps=2, tuning_subset=2)
    out, runs = tmp_path / "out", tmp_path / "runs"
    record = runner.run_one("iic", 0, settings, out=out, runs_dir=runs)
    json_path, frames_path = records.run_paths(out, "accuracy_neu", "iic", 0)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(record))
    assert record["settings"] == settings.key("iic") and record["settings"]["budget_steps"] == 2
    training = record["training"]
    assert training["steps"] == 2 and training["stopped"] == "max_steps" and training["cap_hit"] is False
    assert training["images_seen"] == 2 * record["train_config"]["batch_size"] and 0 < training["seconds"] < 60
    assert (training["budget_steps"], training["cap_s"]) == (2, 60.0)
    final = record["checkpoints"]["final"]
    for proto in ("a", "b"):
        p = final["protocols"][proto]
        assert 0.0 <= p["miou"] <= 1.0 and set(p["iou"]) == set(NEU_CLASSES)
    assert final["protocols"]["b"]["head"] == "over"
    assert final["untouched"]["images"] == record["eval"]["images"] - 2 == 1
    assert record["curves"] and record["curves"][-1]["step"] == record["training"]["steps"]
    with np.load(frames_path) as frames:
        assert frames["b"].shape[0] == len(frames["ids"]) > 0 and frames["b"].shape[1:] == (64, 64)
        assert frames["b"].max() < len(NEU_CLASSES)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "fit", no_training)
    assert runner.run_one("iic", 0, settings, out=out, runs_dir=runs) == json.loads(json_path.read_text())
    json_path.unlink()  # the result is lost but the run dir says training finished: score again, no training
    again = runner.run_one("iic", 0, settings, out=out, runs_dir=runs)
    assert again["checkpoints"]["final"]["heads"] == record["checkpoints"]["final"]["heads"]
    with pytest.raises(ConfigError, match="other settings"):
        runner.run_one("iic", 0, sample_settings(tiny_sample, steps=3, tuning_subset=2), out=out, runs_dir=runs)

    summary = report.write_reports(out, settings)
    assert {(r["row"], r["checkpoint"], r["subset"], r["protocol"]) for r in summary["rows"]} >= {
        ("iic", "final", "all", "a"), ("iic", "final", "all", "b"), ("iic", "final", "untouched", "a")}
    assert summary["settings"]["budget_steps"] == {"iic": 2} and summary["settings"]["cap_s"] == 60.0
    text = (out / "accuracy_neu.md").read_text()
    assert "| iic | 1 | main (4) |" in text and "### iic_seed0" in text
    assert f"| iic | 1 | 2 | {training['seconds']:.0f} | 16 | 0 of 1 |" in text and "(iic 2)" in text
    assert (out / "accuracy_neu.png").stat().st_size > 0 and (out / "accuracy_neu_overlays.png").is_file()


def test_a_run_the_cap_stops_is_marked(tmp_path, monkeypatch):
    stopped = {"reason": "time_budget"}

    def fake_fit(config, run_dir, resume=False):
        return FitResult(run_dir=run_dir, step=7, epoch=0, stopped=stopped["reason"], elapsed_s=9.5)

    monkeypatch.setattr(runner, "fit", fake_fit)
    config = {"train": {"batch_size": 8, "max_steps": 1850, "time_budget_s": 9.0}}
    summary = runner.train_method(config, tmp_path / "capped")
    assert summary["cap_hit"] is True and (summary["steps"], summary["images_seen"]) == (7, 56)
    stopped["reason"] = "max_steps"
    assert runner.train_method(config, tmp_path / "done")["cap_hit"] is False
    stopped["reason"] = "time_budget"  # no step budget: the cap is the budget, not a failure to finish
    assert runner.train_method({"train": {**config["train"], "max_steps": None}}, tmp_path / "wall")["cap_hit"] is False

    runs = [{"row": "iic", "seed": s, "training": {"seconds": 9.5, "steps": n, "images_seen": 8 * n, "cap_hit": hit},
             "checkpoints": {"final": {"protocols": {"b": {"head": "over", "k": 20, "mapping": "m", "miou": 0.3,
                                                           "defect_iou": 0.1, "pixel_accuracy": 0.9,
                                                           "iou": dict.fromkeys(NEU_CLASSES, 0.2)}}}}}
            for s, n, hit in ((0, 7, True), (1, 1850, False))]
    rows = report.aggregate(runs, NEU_CLASSES)
    assert rows[0]["cap_hits"] == 1 and rows[0]["runs"] == 2 and rows[0]["steps"] == pytest.approx(928.5)
    assert "| iic | 2 | 928 | 10 | 7,428 | 1 of 2 |" in "\n".join(report.headline_table(rows))
    tables = "\n".join(report.protocol_tables(rows, NEU_CLASSES, {"b": ""}))
    assert "| iic (cap hit: 1 of 2) | 2 | over (20) |" in tables


def test_each_row_has_its_own_step_budget_in_its_settings_key(sample_dir):
    settings = Settings(eval_limit=None, data_root=str(sample_dir))
    assert settings.key("iic_scratch")["budget_steps"] == ROW_STEPS["iic_scratch"] == 1850
    assert settings.key("kmeans")["budget_steps"] is None  # a baseline fits once
    resized = Settings(eval_limit=None, data_root=str(sample_dir), budget_steps=(*ROW_STEPS.items(), ("iic", 5)))
    assert resized.key("iic") != settings.key("iic") and resized.key("picie") == settings.key("picie")
    with pytest.raises(ConfigError, match=r"no step budget.*ROW_STEPS"):
        Settings(eval_limit=None, data_root=str(sample_dir), budget_steps=()).key("iic")
    old = {"row": "iic", "settings": {"budget_s": 600.0, **{k: v for k, v in settings.key("iic").items()
                                                             if k not in ("budget_steps", "cap_s")}}}
    assert report.select_runs([old], settings) == []  # wall-clock runs are not mixed with step-budget runs


def test_budget_steps_flag():
    assert dict(cli.budget_steps(None, ["iic"])) == ROW_STEPS
    assert dict(cli.budget_steps(["iic=7"], ["iic", "ac"])) == {**ROW_STEPS, "iic": 7}
    assert set(dict(cli.budget_steps(["5"], ["new_row"])).values()) == {5}
    assert dict(cli.budget_steps(["5"], ["new_row"]))["new_row"] == 5
    with pytest.raises(ConfigError, match="N or ROW=N"):
        cli.budget_steps(["iic=many"], ["iic"])
    with pytest.raises(SystemExit):  # not read as --budget-steps 600 (an abbreviation)
        cli.parser().parse_args(["--budget-s", "600"])


def test_eval_subset_is_the_subset_the_baselines_benchmark_scores():
    from training.loaders import image_loader

    ids = [f"{i:06d}" for i in range(40)]
    loader = image_loader(list(range(40)), batch_size=4, limit=9)  # a list stands in for the dataset
    assert [ids[i] for i in loader.dataset.indices] == data.eval_subset(ids, 9)
