import itertools
import json
import logging
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.training.engine.toy_methods import ToyImages, ToySeg
from training import checkpoint as ck
from training.config import TrainConfig, resolve_config
from training.engine import NonFiniteLossError, fit, lr_factor
from training.errors import CheckpointError, ConfigError

TRAIN = ToyImages(16, size=12, crop=8)  # 4 steps per epoch at batch 4
EVAL = ToyImages(4, size=12, train=False)


def config(method="toy_seg", method_config=None, **train):
    train = {"epochs": 2, "batch_size": 4, "num_workers": 0, "log_every": 1, **train}
    return {"method": method, "method_config": method_config or {}, "data": {"train": {"kind": "toy"}},
            "train": train}


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(folder):
    return load_file(folder / ck.MODEL_FILE)


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_run_directory_layout_metrics_and_curves(tmp_path):
    cfg = config(method_config={"over_clusters": 5})
    result = fit(cfg, tmp_path / "run", train_dataset=TRAIN, eval_dataset=EVAL)
    run = tmp_path / "run"
    assert (result.stopped, result.step, result.epoch) == ("completed", 8, 2)
    assert yaml.safe_load((run / "config.yaml").read_text()) == resolve_config(cfg)
    lines = records(run)
    assert all({"kind", "step", "epoch", "elapsed_s"} <= set(r) for r in lines)
    train = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 and r["lr"] == 0.5 for r in train)
    assert "entropy_main" in train[0]  # the method's scalar logs
    evals = [r for r in lines if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]  # after each epoch
    assert 0 <= evals[-1]["miou"] <= 1 and 0 <= evals[-1]["over/miou"] <= 1
    assert evals[-1]["matching"] == "hungarian" and len(evals[-1]["iou"]) == 3
    assert evals[-1]["pixels"] == 4 * 11 * 12  # first row of every toy label is 255 (ignored)
    assert [r["event"] for r in lines if r["kind"] == "event"] == ["start", "end"]
    png = (run / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image

    assert matplotlib.image.imread(run / "curves.png").shape[:2] == (400, 1000)
    last = ck.open_checkpoint(run / "checkpoints" / "last").state
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (8, 2, 0)
    assert last["metrics"]["eval"]["miou"] == evals[-1]["miou"]


def test_hooks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(ToySeg, "record", [])
    fit(config(epochs=1, batch_size=8), tmp_path / "run", train_dataset=TRAIN)
    n_params = len(list(ToySeg(ToySeg.config_class()).parameters()))
    assert ToySeg.record == [
        "on_fit_start", "on_epoch_start:0:True",
        "training_step:0", f"after_backward:{n_params}", "on_step_end:1",
        "training_step:1", f"after_backward:{n_params}", "on_step_end:2",
        "on_epoch_end:0",
    ]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config(method_config={"nan_at_step": 5}, checkpoint_every_steps=2, epochs=5)
    with pytest.raises(NonFiniteLossError, match=r"the loss is nan at step 6 .*checkpoints/last \(step 4\)"):
        fit(cfg, tmp_path / "run", train_dataset=TRAIN)
    last = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert last.state["step"] == 4
    assert all(torch.isfinite(t).all() for t in weights(last.path).values())
    assert records(tmp_path / "run")[-1]["event"] == "non_finite"
    assert (tmp_path / "run" / "curves.png").exists()


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    cfg = config(method_config={"poison_at_step": 3}, checkpoint_every_steps=2, epochs=5)
    with pytest.raises(NonFiniteLossError, match=r"the (weights became non-finite|loss is nan)"):
        fit(cfg, tmp_path / "run", train_dataset=TRAIN)
    last = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert last.state["step"] == 2
    assert all(torch.isfinite(t).all() for t in weights(last.path).values())


def test_stop_request_stops_after_the_step_with_a_resumable_checkpoint(tmp_path):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 3

    result = fit(config(epochs=5), tmp_path / "run", train_dataset=TRAIN, should_stop=should_stop)
    assert (result.stopped, result.step) == ("interrupted", 3)
    state = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last").state
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 0, 3)


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path):
    cfg = config(method_config={"step_sleep_s": 0.05}, epochs=1000, time_budget_s=0.5)
    result = fit(cfg, tmp_path / "run", train_dataset=TRAIN, eval_dataset=EVAL)
    assert result.stopped == "time_budget"
    assert 1 <= result.step < 1000 * 4
    assert result.elapsed_s >= 0.5
    state = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last").state
    assert state["step"] == result.step
    assert state["metrics"]["eval_step"] == result.step  # evaluated at the stop


def test_best_is_the_best_evaluation_and_last_the_end(tmp_path):
    cfg = config("toy_scripted", {"good_epochs": [2]}, epochs=3)
    result = fit(cfg, tmp_path / "run", train_dataset=TRAIN, eval_dataset=EVAL)
    evals = [r["miou"] for r in records(tmp_path / "run") if r["kind"] == "eval"]
    assert evals[1] > 0.9 and evals[0] < 0.5 and evals[2] < 0.5
    assert (result.best_miou, result.best_step) == (evals[1], 8)
    best = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "best").state
    last = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last").state
    assert (best["step"], best["epoch"], last["step"]) == (8, 2, 12)
    method, info = ck.load_method(tmp_path / "run")  # export's entry point takes the best
    assert (info.step, info.metrics["best_miou"], method.epochs_done) == (8, evals[1], 2)


def test_a_resumed_run_keeps_the_best_score_of_the_stopped_one(tmp_path):
    """The stop at max_steps evaluates after the periodic checkpoint of the same step: last must hold that score."""
    cfg = config("toy_scripted", {"good_epochs": [0]}, epochs=1, max_steps=2, checkpoint_every_steps=2)
    first = fit(cfg, tmp_path / "run", train_dataset=TRAIN, eval_dataset=EVAL)
    assert first.best_miou > 0.9 and first.best_step == 2
    cfg["train"]["max_steps"] = None
    second = fit(cfg, tmp_path / "run", resume=True, train_dataset=TRAIN, eval_dataset=EVAL)
    assert second.last_eval["miou"] < 0.5  # epochs_done = 1: the bad predictions
    assert (second.best_miou, second.best_step) == (first.best_miou, 2)
    assert ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "best").state["step"] == 2
    assert [r["step"] for r in records(tmp_path / "run") if r["kind"] == "eval"] == [2, 4]


def test_without_evaluation_best_is_the_last(tmp_path):
    fit(config(epochs=1), tmp_path / "run", train_dataset=TRAIN)
    assert_same_weights(tmp_path / "run" / "checkpoints" / "best", tmp_path / "run" / "checkpoints" / "last")
    assert ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "best").state["step"] == 4


def test_resume_mid_epoch_repeats_the_uninterrupted_run(tmp_path):
    mc = {"epoch_pass": True, "optimizer": "adam", "lr": 0.05}
    full = fit(config(method_config=mc, log_every=2), tmp_path / "full", train_dataset=TRAIN)
    fit(config(method_config=mc, log_every=2, max_steps=5), tmp_path / "split", train_dataset=TRAIN)
    assert ck.open_checkpoint(tmp_path / "split" / "checkpoints" / "last").state["batch_in_epoch"] == 1
    resumed = fit(config(method_config=mc, log_every=2), tmp_path / "split", resume=True, train_dataset=TRAIN)
    assert resumed.step == full.step == 8
    assert_same_weights(tmp_path / "full" / "checkpoints" / "last", tmp_path / "split" / "checkpoints" / "last")

    def logged(run):
        return [(r["kind"], r["step"], r.get("loss"), r.get("feature_mean")) for r in records(run)
                if r["kind"] in ("train", "hook")]

    assert logged(tmp_path / "split") == logged(tmp_path / "full")  # the log window survived the resume too
    events = [r["event"] for r in records(tmp_path / "split") if r["kind"] == "event"]
    assert events == ["start", "resume", "end"]  # lines written after the checkpoint were dropped


def test_resume_warns_about_every_changed_config_key(tmp_path, caplog):
    fit(config(epochs=1), tmp_path / "run", train_dataset=TRAIN)
    changed = config(epochs=2, log_every=3, method_config={"lr": 0.25})
    with caplog.at_level(logging.WARNING):
        result = fit(changed, tmp_path / "run", resume=True, train_dataset=TRAIN)
    assert result.step == 8
    assert [r.getMessage() for r in caplog.records if "config changed" in r.getMessage()] == [
        "config changed on resume: method_config.lr: 0.5 -> 0.25",
        "config changed on resume: train.epochs: 1 -> 2",
        "config changed on resume: train.log_every: 1 -> 3",
    ]
    saved = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last").state["config"]
    assert saved == resolve_config(changed)


def test_fresh_run_refuses_a_directory_with_checkpoints_and_resume_needs_one(tmp_path):
    fit(config(epochs=1), tmp_path / "run", train_dataset=TRAIN)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        fit(config(epochs=1), tmp_path / "run", train_dataset=TRAIN)
    with pytest.raises(CheckpointError, match="no complete checkpoint to resume"):
        fit(config(epochs=1), tmp_path / "other", resume=True, train_dataset=TRAIN)


def test_lr_schedule_factors():
    cfg = TrainConfig(warmup_steps=2, lr_schedule="cosine")
    factors = [lr_factor(s, cfg, total_steps=10) for s in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(a >= b for a, b in itertools.pairwise(factors[1:]))
    assert lr_factor(5, TrainConfig(), total_steps=10) == 1.0


def test_cosine_schedule_is_applied_to_the_optimiser(tmp_path):
    fit(config(epochs=1, lr_schedule="cosine", warmup_steps=1), tmp_path / "run", train_dataset=TRAIN)
    lrs = [r["lr"] for r in records(tmp_path / "run") if r["kind"] == "train"]
    # warm-up step 0, then cosine over the 3 remaining steps: factors 1, 1, 0.75, 0.25
    assert lrs == pytest.approx([0.5, 0.5, 0.375, 0.125])


@pytest.mark.gpu
@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_amp_on_cuda_unscales_before_after_backward(tmp_path, amp_dtype, monkeypatch):
    monkeypatch.setattr(ToySeg, "grad_norms", [])
    result = fit(config(epochs=1, device="cuda", amp=True, amp_dtype=amp_dtype, grad_clip=10.0),
                 tmp_path / "run", train_dataset=TRAIN, eval_dataset=EVAL)
    assert result.step == 4
    assert all(0 < n < 1e3 for n in ToySeg.grad_norms)  # fp16 loss scale is 65536: these are unscaled
    state = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last").state
    assert (state["scaler"] is not None) == (amp_dtype == "float16")
    assert "cuda" in state["rng"][0]
    method, _ = ck.load_method(tmp_path / "run", device="cuda")
    assert next(method.parameters()).is_cuda
