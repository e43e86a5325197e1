"""The rows of the accuracy benchmark: a row is a preset ``training/presets/<row>_neu.yaml`` (a method or a
baseline); this module says which rows run by default, in which order, how much work each method row gets and
which train on a subset. Adding a method row is its preset and one line in ``ROW_STEPS``."""

from __future__ import annotations

from pathlib import Path

from training.config import load_preset, preset_path

BASELINES = ("kmeans", "random_cnn", "kmeans_lite", "kmeans_lite_random", "anomaly")
DEFAULT_ROWS = ("iic", "picie", "infoseg", "ac", "stego", "anomaly", "kmeans_lite", "kmeans_lite_random",
                "iic_scratch", "picie_scratch", "infoseg_scratch", "ac_scratch", "kmeans", "random_cnn")

# The budget of a method row: optimiser steps, a fixed amount of work, so that a score does not depend on how busy
# the machine was (issue 11). Each is sized to about 600 s of 1-thread CPU training on this 2-core machine when it
# is quiet: the median over seeds 1-3 of the steps the 600 s wall-clock runs reached, `training.steps` in
# benchmarks/results/accuracy_neu_runs/<row>_seed<k>.json (commit ff77007, load average 1-3). The same counts are
# used on every dataset (the crops, not the frame size, set a step's cost; CrackForest's 155 frames hold about as
# many pixels as PiCIE's 640-frame NEU subset). Baselines fit once and have no steps. The wall-clock limit
# (``--cap-s``) is only a safety cap; a run that reaches it is marked in its JSON and in the tables.
ROW_STEPS = {
    # the paper networks from random init (the presets *_scratch_neu; measured before issue 11 moved the methods
    # onto the pretrained trunk)
    "iic_scratch": 1850,  # seeds 1-3: 1564, 1981, 1850
    "picie_scratch": 1121,  # 1121, 1121, 1122 (on its 640-image subset)
    "infoseg_scratch": 2679,  # 1336 (a busier machine), 2679, 2737
    "ac_scratch": 2627,  # 2582, 2627, 2698
    # on the pretrained EfficientNet-Lite0 trunk (issue 11): 600 s over the CPU-seconds a step took with one thread
    # (benchmarks/step_cost.py, measured on the loaded machine, so a quiet one may take less than 600 s); PiCIE's
    # count also pays for its two k-means passes over its 640 images each epoch (80 steps)
    "iic": 1500,  # 0.35-0.40 CPU-s a step (loss on the stride-4 grid)
    "picie": 480,  # 0.48 CPU-s a step + about 60 s of k-means passes an epoch
    "infoseg": 2600,  # 0.13-0.23 CPU-s a step
    "ac": 200,  # 3.1 CPU-s a step (masked layers and the loss at the crop's resolution)
    # STEGO (issue 12), measured differently (the machine was never quiet): CPU time of one thread (process time, which
    # a loaded machine inflates little) of stego_neu on NEU train crops: 0.179 s a step (data loading included),
    # 1.0 s per k-means refit (every 100 steps), 17 s for the bank pass at fit start: (600 - 17) / 0.19 = ~3000
    "stego": 3000,
}
DEFAULT_CAP_S = 3600.0  # 6x the quiet-machine time of the step budgets: a busy machine still finishes them
# Rows trained on a seeded subset of the train split (per run seed) instead of all 3223 images: PiCIE runs two
# k-means/labelling passes over its whole training set at every epoch start (and one at every epoch end), which on
# all 3223 images take most of a CPU budget before the first step; a subset gives it several epochs (pseudo-label
# refreshes) within the budget. ``--train-images ROW=N`` overrides (0 = every image).
DEFAULT_TRAIN_IMAGES = {"picie": 640, "picie_scratch": 640}  # k-means passes at every epoch start


def row_preset(row: str) -> Path:
    return preset_path(f"{row}_neu")


def row_order(key: tuple[str, ...]) -> tuple[int, str, str, str]:
    """Sort key of ``(row, ...)`` tuples: the default rows in their order, then any other row."""
    row = key[0]
    return (DEFAULT_ROWS.index(row) if row in DEFAULT_ROWS else len(DEFAULT_ROWS), *key)


def is_baseline(row: str) -> bool:
    """A k-means / random-CNN row (fitted once, no training steps), by name or by its preset's method."""
    return row in BASELINES or load_preset(row_preset(row))["method"] in BASELINES
