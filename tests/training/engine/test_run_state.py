"""The pieces the engine keeps its run state in: the training clock and the metrics log window."""

import pytest

from training import stopwatch as stopwatch_mod
from training.metrics_log import StepWindow
from training.stopwatch import Stopwatch


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(stopwatch_mod.time, "monotonic", fake)
    return fake


def test_stopwatch_counts_training_not_paused_time(clock):
    watch = Stopwatch(base_s=5.0)
    clock.now += 2.0
    with watch.paused():  # evaluation, checkpoint writing
        clock.now += 10.0
    clock.now += 1.0
    assert watch.elapsed() == pytest.approx(8.0)  # 5 resumed + 2 + 1
    assert watch.lap() == pytest.approx(3.0)
    clock.now += 4.0
    with watch.paused():
        clock.now += 7.0
    assert watch.lap() == pytest.approx(4.0)  # since the previous lap, pause excluded
    watch.restart()
    clock.now += 1.5
    assert watch.elapsed() == pytest.approx(6.5) and watch.lap() == pytest.approx(1.5)


def test_step_window_means_and_empties():
    window = StepWindow()
    window.add({"loss": 1.0, "acc": 0.5})
    window.add({"loss": 3.0, "acc": 0.25})
    record = window.take(lr=0.1, seconds=2.0, images_per_step=4)
    assert record == {"loss": 2.0, "acc": 0.375, "lr": 0.1, "images_per_s": 4.0}
    assert list(record) == ["loss", "acc", "lr", "images_per_s"]  # metrics.jsonl key order
    assert (window.sums, window.steps) == ({}, 0)
    window.add({"loss": 1.0})
    assert window.take(lr=0.1, seconds=0.0, images_per_step=4)["images_per_s"] is None
