"""benchmarks/runtime_speed.py: the interleaving, and a --quick run on tiny nets and sizes (the JSON schema)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runtime_speed():
    spec = importlib.util.spec_from_file_location("runtime_speed", ROOT / "benchmarks" / "runtime_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["runtime_speed"] = module
    spec.loader.exec_module(module)
    return module


def test_interleaved_rotates_the_order_and_times_every_call(runtime_speed):
    calls: list[str] = []
    contenders = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = runtime_speed.interleaved(contenders, warmup=2, runs=4)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, untimed
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for v in times.values() for t in v)


def test_interleaved_rewarms_a_contender_after_a_switch_of_group(runtime_speed):
    calls: list[str] = []
    contenders = {name: (lambda n=name: calls.append(n)) for name in ("sdk a", "bare a", "torch")}
    groups = {"sdk a": "a", "bare a": "a", "torch": "torch"}
    times = runtime_speed.interleaved(contenders, warmup=0, runs=2, groups=groups)
    # round 0: sdk a, bare a, torch (untimed torch first); round 1: bare a (untimed bare a first), torch (untimed
    # torch), sdk a (untimed sdk a)
    assert calls == ["sdk a", "bare a", "torch", "torch", "bare a", "bare a", "torch", "torch", "sdk a", "sdk a"]
    assert {k: len(v) for k, v in times.items()} == {"sdk a": 2, "bare a": 2, "torch": 2}


def test_targets_judge_overhead_only_at_the_line_size(runtime_speed):
    rows = [{"model": "m", "precision": "fp32", "size": [256, 1600], "overhead_pct": 1.0,
             "alone": {"overhead_pct": 6.0}, "speedup_ort_vs_torch": 2.5},
            {"model": "m", "precision": "int8", "size": [256, 1600], "overhead_pct": 30.0,
             "alone": {"overhead_pct": 2.0}, "speedup_ort_vs_torch": 2.5},
            {"model": "m", "precision": "fp32", "size": [200, 200], "overhead_pct": 1.0,
             "alone": {"overhead_pct": 9.0}, "speedup_ort_vs_torch": 1.5}]
    t = runtime_speed.targets(rows)  # overhead: judged on the SDK alone with its session, at the line size only
    assert [(i["row"], i["met"]) for i in t["overhead"]] == [("m fp32 256x1600", False), ("m int8 256x1600", True)]
    assert [i["met"] for i in t["speedup"]] == [True, True, False]


def test_small_run_writes_the_report(runtime_speed, tmp_path):
    """One model, one precision, one size, the fast TorchScript exporter: the report's schema from a single export
    (the default run's check; the slow test below runs both models and precisions through the default exporter)."""
    out = tmp_path / "results"
    code = runtime_speed.main(["--quick", "--models", "iic", "--precisions", "fp32", "--sizes", "48x48", "--runs", "2",
                               "--warmup", "0", "--threads", "1", "--memory-model", "iic", "--memory-size", "48x48",
                               "--memory-runs", "1", "2", "--gap-ms", "0", "--matmul-size", "64",
                               "--exporter", "torchscript", "--write", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "runtime_speed.json").read_text())
    assert set(result) == {"settings", "machine", "load_start", "load_end", "loaded", "models", "rows", "memory",
                           "targets"}
    assert [m["name"] for m in result["models"]] == ["iic"]
    (row,) = result["rows"]
    assert (row["model"], row["precision"], row["size"], row["graph_size"]) == ("iic", "fp32", [48, 48], [1, 1, 48, 48])
    for timing in ("sdk", "bare_ort", "torch"):
        assert row[timing]["runs"] == 2 and 0 < row[timing]["p50_ms"] <= row[timing]["p99_ms"]
    assert math.isclose(row["speedup_ort_vs_torch"], row["torch"]["p50_ms"] / row["bare_ort"]["p50_ms"])
    memory = result["memory"]
    assert memory["model"] == "iic" and memory["torch_imported"] is False and memory["checkpoints"] == [1, 2]
    assert set(memory["rss_mb"]) == {"loaded", "1", "2"}
    assert "| fp32 | 48x48 | 48x48 |" in (out / "runtime_speed.md").read_text()


@pytest.mark.slow
def test_quick_run_writes_the_report(runtime_speed, tmp_path):
    """Both models and precisions (four exports): the full ``--quick`` smoke run."""
    out = tmp_path / "results"
    code = runtime_speed.main(["--quick", "--sizes", "64x64", "--runs", "2", "--warmup", "0", "--threads", "1",
                               "--memory-size", "64x64", "--memory-runs", "2", "4", "--gap-ms", "0",
                               "--write", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "runtime_speed.json").read_text())
    assert set(result) == {"settings", "machine", "load_start", "load_end", "loaded", "models", "rows", "memory",
                           "targets"}
    assert isinstance(result["loaded"], bool)
    assert [m["name"] for m in result["models"]] == ["picie", "iic"]
    assert [(r["model"], r["precision"]) for r in result["rows"]] == [
        ("picie", "fp32"), ("picie", "int8"), ("iic", "fp32"), ("iic", "int8")]
    for row in result["rows"]:
        assert row["size"] == [64, 64] and row["graph_size"] == [1, 3 if row["model"] == "picie" else 1, 64, 64]
        for timing in ("sdk", "bare_ort", "torch"):
            assert row[timing]["runs"] == 2 and 0 < row[timing]["p50_ms"] <= row[timing]["p99_ms"]
        assert row["alone"]["sdk"]["runs"] == 2 and row["alone"]["bare_ort"]["p50_ms"] > 0
        assert math.isclose(row["speedup_ort_vs_torch"], row["torch"]["p50_ms"] / row["bare_ort"]["p50_ms"])
        assert row["gflop"] > 0 and row["gflops"] > 0 and row["matmul_gflops"] > 0
        assert row["ort_session"]["intra_op_threads"] == 1
    memory = result["memory"]
    assert memory["model"] == "picie" and memory["torch_imported"] is False and memory["checkpoints"] == [2, 4]
    assert set(memory["rss_mb"]) == {"loaded", "1", "2", "4"} and isinstance(memory["grows"], bool)
    assert len(result["load_start"]) == 3 and result["machine"]["threads"] == 1
    text = (out / "runtime_speed.md").read_text()
    assert "| fp32 | 64x64 | 64x64 |" in text and "## Resident memory" in text and "## Targets" in text
