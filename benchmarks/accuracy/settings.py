"""What must be equal for two runs to be compared, and where the results go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.accuracy.rows import DEFAULT_CAP_S, DEFAULT_TRAIN_IMAGES, ROW_STEPS, is_baseline
from benchmarks.datasets import DATASETS, NEU_SPLIT_FILE, REPO, BenchmarkDataset
from training.errors import ConfigError

RESULTS = REPO / "benchmarks" / "results"


def stem(dataset: str) -> str:
    """The name of every output of one dataset: ``accuracy_<dataset>.json`` / ``.md`` / ``.png``, ``..._runs/``."""
    return f"accuracy_{dataset}"


def default_runs_dir(dataset: str) -> Path:
    """Run directories (checkpoints; not committed) and the converted-dataset cache (``cache/``)."""
    return REPO / "runs" / stem(dataset)


@dataclass(frozen=True)
class Settings:
    """What must be equal for runs to be compared (a per-run JSON with other settings is not reused)."""

    eval_limit: int | None
    data_root: str  # the mask folder read (images/, masks/): NEU-Seg's, or the converted CrackForest
    dataset: str = "neu"  # a key of benchmarks.datasets.DATASETS
    budget_steps: tuple[tuple[str, int], ...] = tuple(ROW_STEPS.items())  # (row, optimiser steps); 0: cap only
    cap_s: float = DEFAULT_CAP_S  # training wall-clock safety cap per run
    device: str = "cpu"
    threads: int = 1
    baseline_fit_images: int = 1000
    split_file: str = str(NEU_SPLIT_FILE)
    eval_split: str = "eval"  # the bundled sample calls it "holdout"
    tuning_subset: int | None = 200  # the eval subset tuning looked at; the rest is scored apart as "untouched"
    train_images: tuple[tuple[str, int], ...] = tuple(DEFAULT_TRAIN_IMAGES.items())  # (row, N): train subsets

    @property
    def benchmark(self) -> BenchmarkDataset:
        return DATASETS[self.dataset]

    @property
    def stem(self) -> str:
        return stem(self.dataset)

    def steps(self, row: str) -> int | None:
        """The step budget of a method row (None: a baseline; 0: none, the wall-clock cap alone stops it)."""
        if is_baseline(row):
            return None
        table = dict(self.budget_steps)
        if row not in table:
            raise ConfigError(f"row {row!r} has no step budget: add it to ROW_STEPS in benchmarks/accuracy/rows.py "
                              f"or pass --budget-steps {row}=N")
        return table[row]

    def key(self, row: str) -> dict[str, Any]:
        """The fields a resumed run of ``row`` must match (threads and device only change the speed; the dataset
        is in the file names and the split file). Each row has its own step budget, so a row added or re-sized
        later leaves the other rows' results valid."""
        return {"budget_steps": self.steps(row), "cap_s": self.cap_s, "eval_limit": self.eval_limit,
                "baseline_fit_images": self.baseline_fit_images, "split_file": Path(self.split_file).name,
                "eval_split": self.eval_split, "tuning_subset": self.tuning_subset,
                "train_images": {row: n for row, n in self.train_images if n}}
