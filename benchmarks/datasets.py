"""The data the benchmarks score on: where it lives, its class names and its split file, in one place.

``benchmarks/baselines.py`` and the accuracy benchmark (``benchmarks/accuracy/``) both read these.
"""

from __future__ import annotations

import os
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
