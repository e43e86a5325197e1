"""The data the benchmarks score on: where it lives, its class names and its split file, in one place.

``benchmarks/baselines.py`` and the accuracy benchmark (``benchmarks/accuracy/``) both read these. A benchmark
dataset is read as a ``mask_folder`` (``images/``, ``masks/`` of 8-bit class ids): NEU-Seg is one already;
CrackForest is converted once into a cached one (``benchmarks/crackforest.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLITS_DIR = REPO / "benchmarks" / "splits"

NEU_CLASSES = ("background", "inclusion", "patches", "scratches")
NEU_SPLIT_FILE = SPLITS_DIR / "neu_seg.json"  # near-duplicate groups kept on one side (training.data.make_splits)


def data_root(value: str | None) -> Path:
    """``--data-root``, else ``$USSEG_DATA``, else ``../shared/data`` (relative to the repository)."""
    root = value or os.environ.get("USSEG_DATA") or str(REPO.parent / "shared" / "data")
    return Path(root).expanduser()


def neu_root(root: str | Path) -> Path:
    """The NEU-Seg folder: ``root/neu-seg``, or ``root`` itself when it holds ``images/`` (the bundled sample)."""
    root = Path(root)
    return root if (root / "images").is_dir() else root / "neu-seg"


def _neu_folder(root: Path, cache: Path) -> Path:
    return neu_root(root)


def _crackforest_folder(root: Path, cache: Path) -> Path:
    from benchmarks.crackforest import mask_folder

    return mask_folder(root, cache)


@dataclass(frozen=True)
class BenchmarkDataset:
    """One dataset of the accuracy benchmark (``--dataset <name>``; outputs ``accuracy_<name>.*``)."""

    name: str
    title: str
    class_names: tuple[str, ...]
    split_file: Path  # JSON with "train" (images only), "calibration" and the eval split (labelled)
    folder: Callable[[Path, Path], Path]  # (data root, cache dir) -> the mask_folder the benchmark reads
    background: int = 0
    eval_split: str = "eval"
    eval_note: str = "never trained on"
    tuning_subset: int | None = None  # eval images tuning looked at (seed-0 permutation); the rest is "untouched"
    tuning_log: str | None = None  # where the tuning runs are written up
    labels_note: str = ""  # how the source's ground truth became these classes

    def mask_folder(self, root: Path, cache: Path) -> Path:
        return self.folder(Path(root), Path(cache))


NEU = BenchmarkDataset(
    name="neu", title="NEU-Seg", class_names=NEU_CLASSES, split_file=NEU_SPLIT_FILE, folder=_neu_folder,
    tuning_subset=200, tuning_log="benchmarks/results/accuracy_neu_tuning.md")
CRACKFOREST = BenchmarkDataset(
    name="crackforest", title="CrackForest", class_names=("background", "crack"),
    split_file=SPLITS_DIR / "crackforest.json", folder=_crackforest_folder,
    eval_note="its frames are among the unlabelled training frames; their labels are never used in training",
    labels_note="CrackForest's ground truth (groundTruth/*.mat, `Segmentation`) has the values 1 background, "
                "2 crack, 3 area enclosed by crack networks, 4 rare; here 1 is background and 2, 3 and 4 are crack "
                "(PROVENANCE recommends crack = 2 alone).")
DATASETS = {d.name: d for d in (NEU, CRACKFOREST)}
