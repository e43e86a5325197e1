"""Evaluation must not outweigh training, and a stop request must not wait for it (issue 13.17): periodic
evaluations stay within ``train.eval_max_fraction``; a stop inside an evaluation or an epoch pass ends it between
two batches, with a checkpoint to resume from."""

import time

import pytest

from tests.training.engine.test_engine import EVAL, TRAIN, assert_same_weights, config, records
from tests.training.engine.toy_methods import ToyImages, ToySeg
from training import checkpoint as ck
from training.engine import fit
from training.stopwatch import EvalBudget

BIG_EVAL = ToyImages(40, size=12, train=False)


def test_periodic_evaluations_stay_within_the_fraction_and_log_it(tmp_path, monkeypatch):
    monkeypatch.setattr(EvalBudget, "FREE_S", 0.0)
    cfg = config(method_config={"eval_sleep_s": 0.03, "step_sleep_s": 0.01}, epochs=100, max_steps=40,
                 eval_every_steps=1, eval_max_fraction=0.25)
    fit(cfg, tmp_path / "run", train_dataset=TRAIN, eval_dataset=EVAL)  # an evaluation: ~4 x 30 ms, a step ~15 ms
    lines = records(tmp_path / "run")
    evals = [r for r in lines if r["kind"] == "eval"]
    skipped = [r for r in lines if r.get("event") == "eval_skipped"]
    assert 3 <= len(evals) < 20 and len(skipped) >= 20  # not 40 (+ the final one)
    assert all(r["eval_s"] > 0.1 for r in evals)
    assert evals[-2]["eval_share"] < 0.45  # bounded (each evaluation overshoots the fraction by one)
    assert skipped[0]["eval_share"] > 0.25


def test_without_a_fraction_every_evaluation_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(EvalBudget, "FREE_S", 0.0)
    cfg = config(method_config={"eval_sleep_s": 0.01}, epochs=1, eval_every_steps=1, eval_max_fraction=None)
    fit(cfg, tmp_path / "run", train_dataset=TRAIN, eval_dataset=EVAL)
    assert [r["step"] for r in records(tmp_path / "run") if r["kind"] == "eval"] == [1, 2, 3, 4, 4]  # + epoch end


def test_a_stop_during_evaluation_ends_it_within_a_batch_with_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(ToySeg, "inference_calls", 0)
    cfg = config(method_config={"eval_sleep_s": 0.1}, epochs=5, eval_every_steps=2)

    def should_stop():  # Ctrl-C arrives while the first evaluation runs (40 frames x 0.1 s: 4 s if waited for)
        return ToySeg.inference_calls > 0

    start = time.monotonic()
    result = fit(cfg, tmp_path / "run", train_dataset=TRAIN, eval_dataset=BIG_EVAL, should_stop=should_stop)
    assert time.monotonic() - start < 3.0 and ToySeg.inference_calls == 1
    assert (result.stopped, result.step) == ("interrupted", 2)
    assert [r for r in records(tmp_path / "run") if r["kind"] == "eval"] == []  # no scores of half a split
    assert ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last").state["step"] == 2


def test_a_stop_during_an_epoch_pass_ends_it_and_the_resumed_run_repeats_it(tmp_path):
    mc = {"epoch_pass": True, "optimizer": "adam", "lr": 0.05}
    seen = []

    def should_stop():  # asked between batches of the epoch-1 pass (epoch 0's pass ran before any step)
        seen.append(ToySeg.record[-1] if ToySeg.record else "")
        return any(r.startswith("on_epoch_start:1") for r in ToySeg.record)

    ToySeg.record = []
    try:
        result = fit(config(method_config=mc), tmp_path / "run", train_dataset=TRAIN, should_stop=should_stop)
        hooks = [r for r in records(tmp_path / "run") if r["kind"] == "hook"]
    finally:
        ToySeg.record = None
    assert (result.stopped, result.step) == ("interrupted", 4)
    assert [h["step"] for h in hooks] == [0]  # epoch 1's pass never finished (it would log feature_mean)
    state = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last").state
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 0)
    fit(config(method_config=mc), tmp_path / "run", resume=True, train_dataset=TRAIN)
    fit(config(method_config=mc), tmp_path / "full", train_dataset=TRAIN)
    assert_same_weights(tmp_path / "run" / "checkpoints" / "last", tmp_path / "full" / "checkpoints" / "last")


def test_eval_max_fraction_is_checked():
    from training.config import TrainConfig
    from training.errors import ConfigError

    with pytest.raises(ConfigError, match="eval_max_fraction must be in"):
        TrainConfig(eval_max_fraction=1.5).validate()
