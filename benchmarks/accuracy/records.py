"""The per-run files under ``--out``: ``<stem>_runs/<row>_seed<k>.json`` (the unit of resumption) and
``<row>_seed<k>_frames.npz`` (that run's labels of the overlay frames); ``<stem>`` is ``accuracy_<dataset>``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from usseg_sdk.atomic import write_bytes_atomic


def run_paths(out: Path, stem: str, row: str, seed: int) -> tuple[Path, Path]:
    folder = out / f"{stem}_runs"
    return folder / f"{row}_seed{seed}.json", folder / f"{row}_seed{seed}_frames.npz"


def load_records(out: Path, stem: str) -> list[dict[str, Any]]:
    folder = out / f"{stem}_runs"
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*_seed*.json"))]


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())
