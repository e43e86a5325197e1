"""Stage 1: train the method on the sample's ``train`` images, without their masks, for a fixed number of steps.

The preset's method and engine settings are kept; the demo replaces its data (the sample's ``train`` split as an
unlabelled ``mask_folder``, no evaluation split: the holdout frames are never looked at during training) and
bounds the run: ``max_steps`` (the contract) and ``time_budget_s`` (only a safety cap); ``epochs`` is lifted so
that they, not the epoch count, end it. A run that reaches its steps is bit-reproducible on a CPU, however busy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.sample import Sample
from demo.settings import DemoError, DemoSettings
from training.config import apply_overrides, load_preset, resolve_config

# Dataset keys every kind takes (training/data/image_dataset.py); the preset's values of these are kept.
SHARED_DATA_KEYS = ("channels", "crop", "crop_mode", "eval_crop", "scale", "short_side", "seed", "max_value")
UNBOUNDED_EPOCHS = 1_000_000


@dataclass(frozen=True)
class TrainingOutcome:
    run_dir: Path
    config: dict[str, Any]
    steps: int
    epochs: int
    stopped: str  # max_steps | time_budget | completed | interrupted
    train_s: float  # training wall-clock (the engine's count: no checkpoint writing)
    wall_s: float  # the whole stage

    @property
    def cap_hit(self) -> bool:
        """The wall-clock cap stopped a run that had a step count: it did less work than the demo promises."""
        return self.stopped == "time_budget" and bool(self.config["train"].get("max_steps"))


def demo_config(settings: DemoSettings, sample: Sample, device: str = "cpu") -> dict[str, Any]:
    """The resolved engine config: the preset with the sample as its data and the demo's bounds."""
    raw = load_preset(settings.preset)
    preset_train = (raw.get("data") or {}).get("train") or {}
    train_spec = {k: v for k, v in preset_train.items() if k in SHARED_DATA_KEYS}
    train_spec.update(kind="mask_folder", root=str(sample.root), split="train", masks_dir=None)
    raw["data"] = {"train": train_spec, "eval": None}
    overrides = [f"train.time_budget_s={settings.cap_s}", f"train.max_steps={settings.steps or 'null'}",
                 f"train.epochs={UNBOUNDED_EPOCHS}", f"train.seed={settings.seed}", f"train.device={device}",
                 "train.num_workers=0"]  # 4-step epochs: DataLoader workers forked per epoch cost more than they save
    return resolve_config(apply_overrides(raw, overrides))


def check_head(config: dict[str, Any], head: str) -> None:
    """Fail before training, not after it, when the method has no such head (e.g. ``over`` for InfoSeg)."""
    from training.methods.base import build_method

    heads = build_method(config["method"], config["method_config"]).eval_heads()
    if head not in heads:
        raise DemoError(f"DEMO_HEAD={head}: {config['method']} has the head(s) {', '.join(heads)}")


def train(config: dict[str, Any], run_dir: Path, *, threads: int = 1, progress: bool = True) -> TrainingOutcome:
    """``training.engine.fit`` with one progress bar; ``threads`` sets torch's CPU threads for the process."""
    import torch

    from training.engine import fit

    torch.set_num_threads(threads)
    start = time.monotonic()
    bar = StepProgress(total=config["train"]["max_steps"], cap_s=config["train"]["time_budget_s"],
                       disable=not progress)
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        try:
            result = fit(config, run_dir, progress=bar)
        finally:
            bar.close()
    return TrainingOutcome(run_dir=run_dir, config=config, steps=result.step, epochs=result.epoch,
                           stopped=result.stopped, train_s=result.elapsed_s, wall_s=time.monotonic() - start)


class StepProgress:
    """One bar for the whole run (the engine's epochs are 4 steps on the sample): steps, loss, time left.

    Implements ``training.engine.Progress``. Without a terminal it redraws at most every 15 s, so a log stays
    readable.
    """

    def __init__(self, total: int | None, cap_s: float | None, disable: bool = False):
        self.total, self.cap_s, self.disable = total, cap_s, disable
        self.bar: Any = None
        self.loss: float | None = None
        self.epoch = 0
        self.start = time.monotonic()

    def _open(self) -> None:
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.bar = tqdm(total=self.total, desc="training", unit="step", dynamic_ncols=True, disable=self.disable,
                        file=sys.stderr, mininterval=0.5 if tty else 15.0, leave=True)
        self.start = time.monotonic()

    def epoch_start(self, epoch: int, total_batches: int, done_batches: int) -> None:
        if self.bar is None:
            self._open()
        self.epoch = epoch

    def step(self, values: dict[str, float]) -> None:
        self.loss = values["loss"] if self.loss is None else 0.9 * self.loss + 0.1 * values["loss"]
        left = "" if self.cap_s is None else f"{max(0.0, self.cap_s - (time.monotonic() - self.start)):.0f}s"
        self.bar.set_postfix_str(f"epoch {self.epoch}, loss {self.loss:.4f}, time cap in {left}", refresh=False)
        self.bar.update(1)

    def epoch_end(self) -> None:
        pass

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

