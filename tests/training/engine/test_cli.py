"""The ``fit`` CLI, including a real SIGKILL of ``python -m training fit`` and ``--resume`` to the same weights."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.training.engine.conftest import single_thread_env
from tests.training.engine.toy_methods import toy_image
from training import checkpoint as ck
from training.__main__ import main
from training.config import apply_overrides, load_preset, resolve_config, with_data_roots
from training.engine import fit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PLUGIN = "tests.training.engine.toy_methods"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 grey 12x12 PNGs in images/, their masks in masks/ (a mask_folder that is also a plain folder)."""
    root = tmp_path_factory.mktemp("toy_data")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in range(24):
        image, label = toy_image(i, 12)
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), (image * 255).round().astype("uint8"))
        cv2.imwrite(str(root / "masks" / f"{i:03d}.png"), label.astype("uint8"))
    (root / "labels.txt").write_text("dark\nbright\nstripe\n")
    return root


@pytest.fixture
def preset(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({
        "method": "toy_seg",
        "method_config": {"epoch_pass": True, "optimizer": "adam", "lr": 0.05},
        "data": {"train": {"kind": "folder", "crop": 8, "channels": 1}, "eval": None},
        "train": {"epochs": 3, "batch_size": 4, "num_workers": 0, "checkpoint_every_steps": 2, "log_every": 1},
    }))
    return path


def _cli(*args):
    return [sys.executable, "-m", "training", "fit", "--plugin", PLUGIN, "--no-progress", *args]


def _last_step(run_dir):
    """Step of the complete last checkpoint (-1: none yet). Cheap: the test polls it while the run trains."""
    found = ck.checkpoint_dir(run_dir, "last")
    try:
        return -1 if found is None else json.loads((found / ck.STATE_FILE).read_text())["step"]
    except (OSError, ValueError):  # caught mid-swap
        return -1


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path, data, preset):
    run = tmp_path / "killed"
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen(_cli("--preset", str(preset), "--data", str(data / "images"), "--out", str(run),
                                 "--set", "method_config.step_sleep_s=0.05"), cwd=ROOT, stdout=log, stderr=log,
                            env=single_thread_env())
    try:
        deadline = time.monotonic() + 120
        while _last_step(run) < 6 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{(tmp_path / 'killed.log').read_text()}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    killed_at = _last_step(run)
    assert 6 <= killed_at < 18
    resumed = subprocess.run(_cli("--resume", str(run), "--set", "method_config.step_sleep_s=0"), cwd=ROOT,
                             capture_output=True, text=True, timeout=300, env=single_thread_env())
    assert resumed.returncode == 0, resumed.stderr
    assert "completed: step 18, epoch 3" in resumed.stdout
    assert f"resuming {run} from step {killed_at}" in resumed.stderr

    # the uninterrupted run, same config (step_sleep_s changes timing only)
    config = resolve_config(with_data_roots(load_preset(preset), str(data / "images"), None))
    fit(config, tmp_path / "uninterrupted")
    expected = load_file(tmp_path / "uninterrupted" / "checkpoints" / "last" / ck.MODEL_FILE)
    got = load_file(run / "checkpoints" / "last" / ck.MODEL_FILE)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_cli_trains_evaluates_and_reports(tmp_path, data, preset, capsys):
    out = tmp_path / "run"
    code = main(["fit", "--plugin", PLUGIN, "--no-progress", "--preset", str(preset), "--data", str(data / "images"),
                 "--eval-data", str(data), "--set", "train.epochs=1",
                 "--out", str(out)])
    assert code == 0
    assert "completed: step 6, epoch 1, best miou " in capsys.readouterr().out
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["eval"]["root"] == str(data) and config["data"]["eval"]["kind"] == "mask_folder"
    assert config["train"]["epochs"] == 1
    state = ck.open_checkpoint(out / "checkpoints" / "best").state
    assert state["metrics"]["eval"]["class_names"] == ["dark", "bright", "stripe"]
    # extend the finished run by one epoch
    assert main(["fit", "--plugin", PLUGIN, "--no-progress", "--resume", str(out), "--set", "train.epochs=2"]) == 0
    assert "completed: step 12, epoch 2" in capsys.readouterr().out


def test_cli_print_config_and_user_errors(tmp_path, data, preset, capsys):
    assert main(["fit", "--plugin", PLUGIN, "--preset", str(preset), "--print-config", "--set", "train.seed=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == resolve_config(apply_overrides(load_preset(preset), ["train.seed=3"]))
    assert main(["fit", "--plugin", PLUGIN, "--preset", str(preset), "--set", "train.epochz=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown key(s) train.epochz; valid keys under train:")
    assert "Traceback" not in err
    assert main(["fit", "--plugin", PLUGIN, "--resume", str(tmp_path / "nothing")]) == 2
    assert "no complete checkpoint to resume from" in capsys.readouterr().err
    assert main(["fit", "--plugin", "no.such.module", "--preset", str(preset)]) == 2
    assert "--plugin no.such.module: cannot import it" in capsys.readouterr().err


def test_progress_bar_smooths_loss_and_counts_steps():
    from training.cli_fit import TqdmProgress

    progress = TqdmProgress(smoothing=0.5, disable=False)
    progress.epoch_start(0, total_batches=4, done_batches=1)
    bar = progress.bar
    for loss in (2.0, 4.0):
        progress.step({"loss": loss, "lr": 0.1, "images": 8})
    assert progress.loss == pytest.approx(3.0) and progress.rate > 0
    assert bar.n == 3
    progress.epoch_end()
    assert progress.bar is None


def test_without_a_terminal_progress_lines_go_to_stdout(tmp_path, data, preset, capsys):
    """Issue 13.2: a log file got nothing between evaluations. capsys' stdout is not a TTY."""
    code = main(["fit", "--plugin", PLUGIN, "--preset", str(preset), "--data", str(data / "images"),
                 "--set", "train.epochs=1", "--progress-every", "0", "--out", str(tmp_path / "run")])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 6
    assert re.fullmatch(r"step 1/6, epoch 0: [0-9.]+ images/s, loss [0-9.]+, ETA \d+m\d\ds", lines[0])
    assert lines[-1].startswith("step 6/6") and lines[-1].endswith("ETA 0m00s")


def test_progress_lines_come_at_the_interval_with_an_eta_bounded_by_the_budget():
    from training.cli_fit import LineProgress

    now = [0.0]
    out = io.StringIO()
    progress = LineProgress(10.0, stream=out, clock=lambda: now[0])
    progress.begin(total_steps=100, step=0, time_left_s=None)
    for step in range(1, 21):  # 1 s per step, 8 images
        now[0] += 1.0
        progress.step({"loss": 2.0, "images": 8, "step": step})
    assert out.getvalue().splitlines() == ["step 10/100, epoch 0: 8.0 images/s, loss 2.0000, ETA 1m30s",
                                           "step 20/100, epoch 0: 8.0 images/s, loss 2.0000, ETA 1m20s"]
    budgeted = LineProgress(1.0, stream=out, clock=lambda: now[0])
    budgeted.begin(total_steps=100, step=0, time_left_s=30.0)
    now[0] += 2.0
    budgeted.step({"loss": 1.0, "images": 8, "step": 1})
    assert out.getvalue().splitlines()[-1].endswith("ETA 0m28s")
    fitted = LineProgress(1.0, stream=out, clock=lambda: now[0])  # a gradient-free method: its one step sees no images
    fitted.begin(total_steps=1, step=0, time_left_s=None)
    now[0] += 80.0
    fitted.step({"loss": 1.5, "step": 1})
    assert out.getvalue().splitlines()[-1] == "step 1/1, epoch 0: loss 1.5000, ETA 0m00s"
