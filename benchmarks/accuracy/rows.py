"""The rows of the accuracy benchmark: a row is a preset ``training/presets/<row>_neu.yaml`` (a method or a
baseline); this module says which rows run by default, in which order, and which train on a subset."""

from __future__ import annotations

from pathlib import Path

from training.config import preset_path

BASELINES = ("kmeans", "random_cnn")
DEFAULT_ROWS = ("iic", "picie", "infoseg", "ac", "kmeans", "random_cnn")
# Rows trained on a seeded subset of the train split (per run seed) instead of all 3223 images: PiCIE runs two
# k-means/labelling passes over its whole training set at every epoch start (and one at every epoch end), which on
# all 3223 images take most of a CPU budget before the first step; a subset gives it several epochs (pseudo-label
# refreshes) within the budget. ``--train-images ROW=N`` overrides (0 = every image).
DEFAULT_TRAIN_IMAGES = {"picie": 640}


def row_preset(row: str) -> Path:
    return preset_path(f"{row}_neu")


def row_order(key: tuple[str, ...]) -> tuple[int, str, str, str]:
    """Sort key of ``(row, ...)`` tuples: the default rows in their order, then any other row."""
    row = key[0]
    return (DEFAULT_ROWS.index(row) if row in DEFAULT_ROWS else len(DEFAULT_ROWS), *key)
