"""PiCIE's presets parse, build their method, and carry the header the preset contract asks for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.methods import build_method

PRESETS = Path(__file__).resolve().parents[2] / "training" / "presets"


@pytest.mark.parametrize("name,k,heads", [("picie_cocostuff27", 27, {"main": 27}),
                                          ("picie_scratch_cpu", 4, {"main": 4, "over": 12})])
def test_preset_builds_its_method(name, k, heads):
    text = (PRESETS / f"{name}.yaml").read_text(encoding="utf-8")
    assert text.startswith("# PiCIE")
    preset = yaml.safe_load(text)
    assert set(preset) == {"method", "method_config", "data", "train"}
    method = build_method(preset["method"], preset["method_config"])
    assert method.config.n_clusters == k and method.eval_heads() == heads
    assert preset["data"]["train"]["root"] is None  # --data sets it


def test_paper_preset_matches_the_official_run():
    preset = yaml.safe_load((PRESETS / "picie_cocostuff27.yaml").read_text(encoding="utf-8"))
    c, t = preset["method_config"], preset["train"]
    assert (c["lr"], c["weight_decay"], c["view_size"], c["feature_dim"]) == (1.0e-4, 0.0, 320, 128)
    assert (t["epochs"], t["batch_size"], t["seed"]) == (10, 128, 1)
    # 20 init batches of 256 images and one update per 256 images, with 128-image batches.
    assert c["kmeans_init_batches"] * t["batch_size"] == 20 * 256
    assert c["kmeans_batches_per_update"] * t["batch_size"] == 256
    assert all(c[f] for f in c if f.startswith("official_"))
