"""``usseg doctor`` checks what every command needs and names the command a missing module breaks, with the pip
line that fixes it (modules are hidden with ``sys.modules[name] = None``, which makes their import fail)."""

from __future__ import annotations

import json
import sys

import pytest

from usseg_sdk.cli import COMMANDS, main
from usseg_sdk.doctor import COMMAND_NEEDS


def _doctor(capsys) -> tuple[int, dict]:
    rc = main(["doctor", "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_every_command_is_checked(capsys):
    assert set(COMMAND_NEEDS) == set(COMMANDS)
    _, report = _doctor(capsys)
    assert set(report["commands"]) == set(COMMANDS)
    assert all(c["ok"] for c in report["commands"].values()), report["commands"]  # this venv has them all


def test_without_onnx_calibrate_would_fail(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    rc, report = _doctor(capsys)
    calibrate = report["commands"]["calibrate"]
    assert rc == 1 and not calibrate["ok"]
    assert calibrate["missing"] == [{"module": "onnx", "for": "writing a calibrated .onnx model",
                                     "fix": "pip install onnx"}]
    assert report["commands"]["predict"]["ok"] and report["commands"]["bench"]["ok"]
    assert any(p.startswith("usseg calibrate would fail") and "pip install onnx" in p for p in report["problems"])
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "calibrate FAILS" in out and "PROBLEM: usseg calibrate would fail" in out and out.splitlines()[-1] != "ok"


@pytest.mark.parametrize("hidden", [("onnxruntime", "tensorrt")])
def test_without_a_backend_every_model_command_would_fail(capsys, monkeypatch, hidden):
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)
    rc, report = _doctor(capsys)
    failing = sorted(name for name, c in report["commands"].items() if not c["ok"])
    assert rc == 1 and failing == ["bench", "calibrate", "info", "predict"]
    fix = report["commands"]["predict"]["missing"][0]["fix"]
    assert fix.startswith("pip install onnxruntime") and "torch" not in fix
