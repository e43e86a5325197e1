"""Resume when there is little to resume from (issue 13.3): a run killed before its first periodic checkpoint, a
run directory without any checkpoint (``--resume ... --fresh``), a damaged ``last`` (falls back to ``best``)."""

import json
import logging

import pytest
import yaml

from tests.training.engine.test_engine import EVAL, TRAIN, config, records
from training import checkpoint as ck
from training.__main__ import main
from training.engine import NonFiniteLossError, fit
from training.errors import CheckpointError

PLUGIN = "tests.training.engine.toy_methods"


def test_a_run_stopped_before_its_first_periodic_checkpoint_can_be_resumed(tmp_path):
    cfg = config(method_config={"nan_at_step": 0}, checkpoint_every_steps=100)
    with pytest.raises(NonFiniteLossError, match=r"checkpoints/last \(step 0\)"):
        fit(cfg, tmp_path / "run", train_dataset=TRAIN)
    assert ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last").state["step"] == 0
    cfg["method_config"]["nan_at_step"] = None
    resumed = fit(cfg, tmp_path / "run", resume=True, train_dataset=TRAIN)
    fit(cfg, tmp_path / "full", train_dataset=TRAIN)
    assert resumed.step == 8
    assert ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last").path.joinpath(ck.MODEL_FILE).read_bytes() == \
        ck.open_checkpoint(tmp_path / "full" / "checkpoints" / "last").path.joinpath(ck.MODEL_FILE).read_bytes()


def test_a_damaged_last_falls_back_to_best_with_a_warning_naming_both(tmp_path, caplog):
    cfg = config("toy_scripted", {"good_epochs": [1]}, epochs=3)
    fit(cfg, tmp_path / "run", train_dataset=TRAIN, eval_dataset=EVAL)
    last = tmp_path / "run" / "checkpoints" / "last" / ck.MODEL_FILE
    last.write_bytes(last.read_bytes()[:-8] + b"damaged!")
    cfg["train"]["epochs"] = 4
    with caplog.at_level(logging.WARNING):
        result = fit(cfg, tmp_path / "run", resume=True, train_dataset=TRAIN, eval_dataset=EVAL)
    warning = next(r.getMessage() for r in caplog.records if "cannot resume from" in r.getMessage())
    assert "checkpoints/last" in warning and "sha256 does not match" in warning
    assert "checkpoints/best (step 4) instead" in warning
    assert result.step == 16
    assert [r["event"] for r in records(tmp_path / "run") if r["kind"] == "event"] == ["start", "resume", "end"]


def test_resume_without_any_checkpoint_names_fresh_and_fresh_restarts(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    raw = {"method": "toy_seg", "data": {"train": {"kind": "folder", "root": str(tmp_path / "frames"), "crop": 8,
                                                   "channels": 1}, "eval": None},
           "train": {"epochs": 1, "batch_size": 2, "num_workers": 0}}
    (run / "config.yaml").write_text(yaml.safe_dump(raw))  # what a run killed while loading its data leaves
    assert main(["fit", "--plugin", PLUGIN, "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint to resume from" in err and f"--resume {run} --fresh" in err
    import cv2
    import numpy as np

    (tmp_path / "frames").mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / "frames" / f"{i}.png"), np.full((10, 10), 40 * i, np.uint8))
    assert main(["fit", "--plugin", PLUGIN, "--no-progress", "--resume", str(run), "--fresh"]) == 0
    assert "completed: step 2, epoch 1" in capsys.readouterr().out
    assert json.loads((run / "checkpoints" / "last" / ck.STATE_FILE).read_text())["step"] == 2
    with pytest.raises(CheckpointError, match="no complete checkpoint to resume from"):
        ck.resume_checkpoint(tmp_path / "elsewhere")
