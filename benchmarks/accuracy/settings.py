"""What must be equal for two runs to be compared, and where the results go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.accuracy.rows import DEFAULT_TRAIN_IMAGES
from benchmarks.datasets import NEU_SPLIT_FILE, REPO

RESULTS = REPO / "benchmarks" / "results"
STEM = "accuracy_neu"


@dataclass(frozen=True)
class Settings:
    """What must be equal for runs to be compared (a per-run JSON with other settings is not reused)."""

    budget_s: float
    eval_limit: int | None
    data_root: str
    device: str = "cpu"
    threads: int = 1
    baseline_fit_images: int = 1000
    split_file: str = str(NEU_SPLIT_FILE)
    eval_split: str = "eval"  # the bundled sample calls it "holdout"
    tuning_subset: int | None = 200  # the eval subset tuning looked at; the rest is scored apart as "untouched"
    train_images: tuple[tuple[str, int], ...] = tuple(DEFAULT_TRAIN_IMAGES.items())  # (row, N): train subsets

    def key(self) -> dict[str, Any]:
        """The fields a resumed run must match (threads and device only change the speed)."""
        return {"budget_s": self.budget_s, "eval_limit": self.eval_limit,
                "baseline_fit_images": self.baseline_fit_images, "split_file": Path(self.split_file).name,
                "eval_split": self.eval_split, "tuning_subset": self.tuning_subset,
                "train_images": {row: n for row, n in self.train_images if n}}
