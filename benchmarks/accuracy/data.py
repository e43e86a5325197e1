"""The images each part of the benchmark sees: splits, the fixed eval subsets, dataset specs and loaders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.accuracy.settings import Settings
from training.data import build_dataset
from training.errors import ConfigError

OVERLAY_PER_CLASS = 2  # overlay frames: the first eval ids (sorted) whose largest defect is each defect class
OVERLAY_FRAMES = 6  # ... and at least this many in all (a dataset with one defect class shows 6 of it)


def split_ids(split_file: str | Path, split: str) -> list[str]:
    data = json.loads(Path(split_file).read_text(encoding="utf-8"))
    if split not in data:
        raise ConfigError(f"split file {split_file} has no split {split!r}")
    return sorted(data[split])


def eval_subset(ids: Sequence[str], limit: int | None) -> list[str]:
    """The fixed evaluation subset: a seed-0 permutation of the sorted ids, first ``limit``, sorted again (the
    subset ``training.loaders.image_loader(limit=..., seed=0)`` takes)."""
    ids = sorted(ids)
    if limit is None or limit >= len(ids):
        return ids
    keep = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    return [ids[i] for i in keep.tolist()]


def eval_parts(settings: Settings) -> dict[str, list[str]]:
    """``eval_tuning``: the eval ids scored (``--eval-limit`` subset, or the whole split); with the whole split and
    a ``tuning_subset``, ``eval_tuning`` is that subset and ``eval_untouched`` the rest."""
    ids = split_ids(settings.split_file, settings.eval_split)
    if settings.eval_limit is not None or not settings.tuning_subset or settings.tuning_subset >= len(ids):
        return {"eval_tuning": eval_subset(ids, settings.eval_limit)}
    tuning = eval_subset(ids, settings.tuning_subset)
    seen = set(tuning)
    return {"eval_tuning": tuning, "eval_untouched": [i for i in ids if i not in seen]}


def labelled_spec(root: Path, ids: Sequence[str], channels: int, class_names: Sequence[str]) -> dict[str, Any]:
    return {"kind": "mask_folder", "root": str(root), "ids": list(ids), "channels": channels,
            "class_names": list(class_names)}


def training_spec(preset_train: dict[str, Any], root: Path, split_file: str) -> dict[str, Any]:
    """The preset's training spec (crop, channels, ...) on the ``train`` split of the mask folder ``root``, images
    only."""
    spec = {k: v for k, v in (preset_train or {}).items() if k not in ("kind", "root", "split", "split_file", "ids")}
    return {**spec, "kind": "mask_folder", "root": str(root), "split_file": str(split_file),
            "split": "train", "masks_dir": None}


def image_loader(spec: dict[str, Any], batch_size: int = 8) -> DataLoader:
    return DataLoader(build_dataset(spec, train=False), batch_size=batch_size, shuffle=False, num_workers=0)


def overlay_ids(root: Path, ids: Sequence[str], n_classes: int) -> list[str]:
    """The first ids (sorted) whose largest defect class is each defect class (class 0 is background):
    ``OVERLAY_PER_CLASS`` per class, and at least ``OVERLAY_FRAMES`` frames in all."""
    from training.data.image_io import read_label

    per_class = max(OVERLAY_PER_CLASS, OVERLAY_FRAMES // max(1, n_classes - 1))
    chosen: dict[int, list[str]] = {c: [] for c in range(1, n_classes)}
    for image_id in sorted(ids):
        label = read_label(Path(root) / "masks" / f"{image_id}.png")
        counts = np.bincount(label[label < n_classes].ravel(), minlength=n_classes)[1:]
        if counts.sum() == 0:
            continue
        cls = int(counts.argmax()) + 1
        if len(chosen[cls]) < per_class:
            chosen[cls].append(image_id)
        if all(len(v) == per_class for v in chosen.values()):
            break
    return [i for c in sorted(chosen) for i in chosen[c]]


def scoring_loaders(settings: Settings, channels: int) -> tuple[dict[str, DataLoader], DataLoader]:
    """Loaders of the eval parts and of calibration (labelled), and of the overlay frames."""
    root, names = Path(settings.data_root), settings.benchmark.class_names
    parts = eval_parts(settings)
    loaders = {name: image_loader(labelled_spec(root, ids, channels, names)) for name, ids in parts.items()}
    loaders["calibration"] = image_loader(labelled_spec(root, split_ids(settings.split_file, "calibration"),
                                                        channels, names))
    all_ids = sorted(i for ids in parts.values() for i in ids)
    frames = image_loader(labelled_spec(root, overlay_ids(root, all_ids, len(names)), channels, names))
    return loaders, frames
