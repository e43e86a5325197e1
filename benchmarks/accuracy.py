"""Accuracy of every method and baseline on NEU-Seg: train without labels under a wall-clock budget, then score.

For each row (a method preset ``training/presets/<row>_neu.yaml``, or a baseline: ``kmeans``, ``random_cnn``) and
each seed, on NEU-Seg (``$USSEG_DATA/neu-seg``; splits from ``benchmarks/splits/neu_seg.json``, near-duplicate
groups kept on one side):

* Training: the engine (``training.engine.fit``) on the 3223 ``train`` images, labels unused, until
  ``--budget-s`` seconds of training wall-clock are spent (``train.time_budget_s``; evaluation and checkpoint
  writing do not count). The engine evaluates the 40-image labelled ``calibration`` split (inside ``train``)
  every epoch and every ``train.eval_every_steps`` steps: those are the per-epoch curves, and its best main-head
  mIoU picks the ``best`` checkpoint. The ``eval`` split is never trained on and no run's choice (checkpoint,
  mapping) looks at it. The presets were tuned looking at a fixed subset of it (``--tuning-subset``, 200 images;
  benchmarks/results/accuracy_neu_tuning.md), so every score is also given for the other eval images alone
  (``untouched``). Baselines fit their k-means once on ``--baseline-fit-images`` train images (their fit time is
  their training time).
* Scoring, of the ``final`` weights and of the ``best``-by-calibration checkpoint, on the ``eval`` split (800
  images, or the fixed subset ``--eval-limit``: a seed-0 permutation of the sorted eval ids, the subset
  ``benchmarks/baselines.py`` uses):
  (a) main head (k = 4), Hungarian one-to-one mapping fitted on the eval images themselves (IIC's protocol);
  (b) the over-clustering head where the model has one (else the main head), many-to-one mapping fitted on the
      calibration images and applied to the eval images (how a line names clusters from a few labelled frames).
  Each head is also scored with the other mapping source (``same_images`` / ``calibration``) in the JSON.
* A checkpoint taken in the middle of an epoch (a budget stop) first gets that epoch closed with the method's
  ``on_epoch_end`` over the training images (PiCIE refits its inference centroids there; without it the
  centroids would be those of the previous epoch's net); the time it takes counts as training time.

Files, under ``--out`` (default ``benchmarks/results``)::

    accuracy_neu.json / .md        every run and the mean / std over seeds per row, the tables
    accuracy_neu.png               mIoU and defect IoU per row, protocols (a) and (b), seed std as error bars
    accuracy_neu_overlays.png      a few eval frames x [image, ground truth, each row's protocol-(b) labels]
    accuracy_neu_curves.png        calibration mIoU against training time, per row (seed 0)
    accuracy_neu_runs/<row>_seed<k>.json      one per run: the unit of resumption (an existing file is skipped)
    accuracy_neu_runs/<row>_seed<k>_frames.npz   that run's predicted labels on the overlay frames

Run directories (checkpoints, ``metrics.jsonl``; not committed) go to ``--runs-dir`` (default
``runs/accuracy_neu``); an interrupted training resumes from its last checkpoint (the budget spans resumes).

    .venv/bin/python benchmarks/accuracy.py --methods iic picie infoseg ac kmeans random_cnn --seeds 0 1 2 \\
        --budget-s 600 --threads 1
    .venv/bin/python benchmarks/accuracy.py --methods iic kmeans --seeds 0 --budget-s 20 --eval-limit 16 \\
        --data-root samples --out /tmp/acc --runs-dir /tmp/acc/runs     # smoke run on the bundled sample
    .venv/bin/python benchmarks/accuracy.py --report-only                # rebuild tables and figures from the JSONs
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a script, not a package: make training importable from any working directory
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from training import checkpoint as ckpt_io  # noqa: E402
from training.config import load_preset, preset_path  # noqa: E402
from training.data import build_dataset  # noqa: E402
from training.engine import fit  # noqa: E402
from training.errors import ConfigError, TrainingError  # noqa: E402
from training.evaluation import cluster_confusions  # noqa: E402
from training.loaders import train_loader  # noqa: E402
from training.methods.base import FitContext, available_methods, build_method, config_to_dict  # noqa: E402
from usseg_sdk.atomic import write_bytes_atomic, write_text_atomic  # noqa: E402
from usseg_sdk.metrics import apply_mapping, fit_mapping, matching_mode, segmentation_scores  # noqa: E402

log = logging.getLogger("benchmarks.accuracy")

NEU_CLASSES = ("background", "inclusion", "patches", "scratches")
SPLIT_FILE = REPO / "benchmarks" / "splits" / "neu_seg.json"
RESULTS = REPO / "benchmarks" / "results"
STEM = "accuracy_neu"
BASELINES = ("kmeans", "random_cnn")
DEFAULT_ROWS = ("iic", "picie", "infoseg", "ac", "kmeans", "random_cnn")
OVERLAY_PER_CLASS = 2  # overlay frames: the first eval ids (sorted) whose largest defect is each defect class
# Rows trained on a seeded subset of the train split (per run seed) instead of all 3223 images: PiCIE runs two
# k-means/labelling passes over its whole training set at every epoch start (and one at every epoch end), which on
# all 3223 images take most of a CPU budget before the first step; a subset gives it several epochs (pseudo-label
# refreshes) within the budget. ``--train-images ROW=N`` overrides (0 = every image).
DEFAULT_TRAIN_IMAGES = {"picie": 640}
TRAINED_MARKER = "benchmark_training.json"  # in a run dir: training finished (a rerun must not train further)


@dataclass(frozen=True)
class Settings:
    """What must be equal for runs to be compared (a per-run JSON with other settings is not reused)."""

    budget_s: float
    eval_limit: int | None
    data_root: str
    device: str = "cpu"
    threads: int = 1
    baseline_fit_images: int = 1000
    split_file: str = str(SPLIT_FILE)
    eval_split: str = "eval"  # the bundled sample calls it "holdout"
    tuning_subset: int | None = 200  # the eval subset tuning looked at; the rest is scored apart as "untouched"
    train_images: tuple[tuple[str, int], ...] = tuple(DEFAULT_TRAIN_IMAGES.items())  # (row, N): train subsets

    def key(self) -> dict[str, Any]:
        """The fields a resumed run must match (threads and device only change the speed)."""
        return {"budget_s": self.budget_s, "eval_limit": self.eval_limit,
                "baseline_fit_images": self.baseline_fit_images, "split_file": Path(self.split_file).name,
                "eval_split": self.eval_split, "tuning_subset": self.tuning_subset,
                "train_images": {row: n for row, n in self.train_images if n}}


# -- data -------------------------------------------------------------------------------------------------------
def data_root(value: str | None) -> Path:
    """``--data-root``, else ``$USSEG_DATA``, else ``../shared/data`` (relative to the repository)."""
    root = value or os.environ.get("USSEG_DATA") or str(REPO.parent / "shared" / "data")
    return Path(root).expanduser()


def neu_root(root: str | Path) -> Path:
    """The NEU-Seg folder: ``root/neu-seg``, or ``root`` itself when it holds ``images/`` (the bundled sample)."""
    root = Path(root)
    return root if (root / "images").is_dir() else root / "neu-seg"


def split_ids(split_file: str | Path, split: str) -> list[str]:
    data = json.loads(Path(split_file).read_text(encoding="utf-8"))
    if split not in data:
        raise ConfigError(f"split file {split_file} has no split {split!r}")
    return sorted(data[split])


def eval_subset(ids: Sequence[str], limit: int | None) -> list[str]:
    """The fixed evaluation subset: a seed-0 permutation of the sorted ids, first ``limit``, sorted again (the
    subset ``training.baselines.image_loader(limit=..., seed=0)`` takes)."""
    ids = sorted(ids)
    if limit is None or limit >= len(ids):
        return ids
    keep = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    return [ids[i] for i in keep.tolist()]


def labelled_spec(root: Path, ids: Sequence[str], channels: int) -> dict[str, Any]:
    return {"kind": "mask_folder", "root": str(neu_root(root)), "ids": list(ids), "channels": channels,
            "class_names": list(NEU_CLASSES)}


def training_spec(preset_train: dict[str, Any], root: Path, split_file: str) -> dict[str, Any]:
    """The preset's training spec (crop, channels, ...) on NEU-Seg's ``train`` split, images only."""
    spec = {k: v for k, v in (preset_train or {}).items() if k not in ("kind", "root", "split", "split_file", "ids")}
    return {**spec, "kind": "mask_folder", "root": str(neu_root(root)), "split_file": str(split_file),
            "split": "train", "masks_dir": None}


def image_loader(spec: dict[str, Any], batch_size: int = 8) -> DataLoader:
    return DataLoader(build_dataset(spec, train=False), batch_size=batch_size, shuffle=False, num_workers=0)


def overlay_ids(root: Path, ids: Sequence[str]) -> list[str]:
    """The first ``OVERLAY_PER_CLASS`` ids (sorted) whose largest defect class is inclusion, patches, scratches."""
    from training.data.image_io import read_label

    chosen: dict[int, list[str]] = {c: [] for c in range(1, len(NEU_CLASSES))}
    for image_id in sorted(ids):
        label = read_label(neu_root(root) / "masks" / f"{image_id}.png")
        counts = np.bincount(label[label < len(NEU_CLASSES)].ravel(), minlength=len(NEU_CLASSES))[1:]
        if counts.sum() == 0:
            continue
        cls = int(counts.argmax()) + 1
        if len(chosen[cls]) < OVERLAY_PER_CLASS:
            chosen[cls].append(image_id)
        if all(len(v) == OVERLAY_PER_CLASS for v in chosen.values()):
            break
    return [i for c in sorted(chosen) for i in chosen[c]]


# -- scoring ----------------------------------------------------------------------------------------------------
def score_heads(eval_counts: dict[str, Any], calibration_counts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Head -> {"k", "matching", "same_images": scores, "calibration": scores}: the mapping fitted on the eval
    images themselves, or on the calibration images and applied to the eval images (``usseg_sdk.metrics.
    matching_mode``: Hungarian one-to-one when the head has at most as many clusters as classes, else many-to-one);
    ``calibration_miou_fit``: the mIoU-fitted many-to-one mapping of the calibration images (protocol (c))."""
    out = {}
    for head, counts in eval_counts.items():
        matrix = _numpy(counts)  # (K, n_classes) [cluster, class]
        k, n_classes = matrix.shape
        mode = matching_mode(k, n_classes)
        calib = _numpy(calibration_counts[head])
        out[head] = {"k": k, "matching": mode,
                     "same_images": _mapped(matrix, fit_mapping(matrix, mode)[0]),
                     "calibration": _mapped(matrix, fit_mapping(calib, mode)[0]),
                     "calibration_miou_fit": _mapped(matrix, fit_mapping(calib, "miou")[0])}
    return out


def _mapped(matrix: np.ndarray, mapping: np.ndarray) -> dict[str, Any]:
    scores = segmentation_scores(apply_mapping(matrix, mapping), NEU_CLASSES, background=0)
    return {**scores.to_dict(), "mapping": [int(c) for c in mapping]}


def _numpy(counts: Any) -> np.ndarray:
    return counts.cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)


def protocols(heads: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """(a) main head, Hungarian on the eval images (None when its K is not the class count); (b) the "over" head
    (else the main head), mapping fitted on calibration, many-to-one (Hungarian when K <= classes)."""
    main = heads["main"]
    a = _summary(main["same_images"], "main", main["k"], "hungarian/eval") if main["k"] == len(NEU_CLASSES) \
        else None
    head = "over" if "over" in heads else "main"
    entry = heads[head]
    b = _summary(entry["calibration"], head, entry["k"], f"{entry['matching']}/calibration")
    c = _summary(entry["calibration_miou_fit"], head, entry["k"], "miou-fit/calibration")
    return {"a": a, "b": b, "c": c}


def _summary(scores: dict[str, Any], head: str, k: int, mapping: str) -> dict[str, Any]:
    return {"head": head, "k": k, "mapping": mapping, "pixel_accuracy": scores["pixel_accuracy"],
            "miou": scores["miou"], "defect_iou": scores["defect_iou"],
            "iou": {name: v["iou"] for name, v in scores["per_class"].items()}}


# -- methods ----------------------------------------------------------------------------------------------------
def row_preset(row: str) -> Path:
    return preset_path(f"{row}_neu")


def method_config(row: str, seed: int, settings: Settings, overrides: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The engine config of one run: the row's preset on NEU-Seg train (images only), calibration as data.eval,
    the budget and the seed. ``overrides``: dotted keys -> values (tuning)."""
    config = copy.deepcopy(load_preset(row_preset(row)))
    root = Path(settings.data_root)
    channels = int((config.get("method_config") or {}).get("channels", 1))
    config.setdefault("data", {})
    config["data"]["train"] = training_spec(config["data"].get("train") or {}, root, settings.split_file)
    n_images = dict(settings.train_images).get(row, 0)
    train_ids = split_ids(settings.split_file, "train")
    if n_images and n_images < len(train_ids):  # a subset drawn with the run's seed
        keep = torch.randperm(len(train_ids), generator=torch.Generator().manual_seed(seed))[:n_images]
        spec = {k: v for k, v in config["data"]["train"].items() if k not in ("split", "split_file")}
        config["data"]["train"] = {**spec, "ids": sorted(train_ids[i] for i in keep.tolist())}
    config["data"]["eval"] = labelled_spec(root, split_ids(settings.split_file, "calibration"), channels)
    train = config.setdefault("train", {})
    train.update(time_budget_s=float(settings.budget_s), seed=int(seed), num_workers=0, device=settings.device,
                 epochs=max(int(train.get("epochs", 1)), 100_000))  # only the budget stops the run
    for key, value in (overrides or {}).items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def train_method(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train (or resume, or skip when finished) one run; returns the training summary the marker file holds."""
    marker = run_dir / TRAINED_MARKER
    if marker.is_file():
        log.info("%s: training already finished", run_dir)
        return json.loads(marker.read_text(encoding="utf-8"))
    resume = ckpt_io.checkpoint_dir(run_dir, "last") is not None
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: start again
    result = fit(config, run_dir, resume=resume)
    summary = {"seconds": round(result.elapsed_s, 2), "steps": result.step, "epochs": result.epoch,
               "stopped": result.stopped, "best_step": result.best_step, "resumed": resume,
               "images_seen": result.step * int(config["train"].get("batch_size", 16))}
    write_text_atomic(marker, json.dumps(summary, indent=1))
    return summary


def close_epoch(method: Any, config: dict[str, Any], state: dict[str, Any]) -> float:
    """Run ``on_epoch_end`` for a checkpoint taken inside an epoch; returns the seconds it took (0 otherwise)."""
    if int(state.get("batch_in_epoch", 0)) == 0:
        return 0.0
    start = time.perf_counter()
    dataset = build_dataset(config["data"]["train"], train=True)
    train_cfg = config["train"]
    loader, sampler = train_loader(dataset, batch_size=int(train_cfg["batch_size"]), seed=int(train_cfg["seed"]),
                                   num_workers=0, rank=0, world_size=1, pin_memory=False, stream=1)
    sampler.set_epoch(int(state["epoch"]))
    device = next(iter(method.buffers()), torch.zeros(())).device
    ctx = FitContext(device=device, epoch=int(state["epoch"]), step=int(state["step"]), train_loader=loader,
                     steps_per_epoch=int(state.get("steps_per_epoch", 0)))
    was_training = method.training
    method.train()
    try:
        method.on_epoch_end(ctx)
    finally:
        method.train(was_training)
    return time.perf_counter() - start


def score_checkpoint(run_dir: Path, which: str, config: dict[str, Any], loaders: dict[str, DataLoader],
                     device: str, frames: DataLoader | None) -> dict[str, Any]:
    """Load ``checkpoints/<which>``, close its epoch if needed, score it on eval (and calibration for mapping)."""
    found = ckpt_io.checkpoint_dir(run_dir, which)
    if found is None:
        raise TrainingError(f"{run_dir}: no checkpoints/{which}")
    method, info = ckpt_io.load_method(found, device=device)
    state = ckpt_io.open_checkpoint(found).state
    torch.manual_seed(int(config["train"]["seed"]) + 7919)  # the epoch-closing pass draws from the global RNG
    extra_s = close_epoch(method, config, state)
    entry = {"checkpoint": which, "step": info.step, "epoch": info.epoch, "mid_epoch_closed_s": round(extra_s, 2),
             "calibration_miou_at_save": (info.metrics.get("eval") or {}).get("miou"),
             **score_method(method, loaders, device)}
    if frames is not None:
        entry["frames"] = predict_frames(method, frames, entry["heads"], device)
    return entry


def score_method(method: Any, loaders: dict[str, DataLoader], device: str) -> dict[str, Any]:
    """Cluster confusions of every head on the eval parts and calibration -> scores of the whole eval set
    (``heads``, ``protocols``) and, when the eval set has a part tuning never looked at, of that part alone."""
    method.eval()
    n = len(NEU_CLASSES)
    counts = {name: cluster_confusions(method, loader, device=torch.device(device), n_classes=n)
              for name, loader in loaders.items()}
    parts = [counts[name] for name in ("eval_tuning", "eval_untouched") if name in counts]
    whole = {head: sum(part[head] for part in parts) for head in parts[0]}
    heads = score_heads(whole, counts["calibration"])
    raw = {"eval": whole, **{name: c for name, c in counts.items() if name in ("calibration", "eval_untouched")}}
    out: dict[str, Any] = {"heads": heads, "protocols": protocols(heads),
                           "confusions": {name: {head: _numpy(m).tolist() for head, m in c.items()}
                                          for name, c in raw.items()}}
    if "eval_untouched" in counts and "eval_tuning" in counts:
        untouched = score_heads(counts["eval_untouched"], counts["calibration"])
        out["untouched"] = {"images": len(loaders["eval_untouched"].dataset), "heads": untouched,
                            "protocols": protocols(untouched)}
    return out


@torch.no_grad()
def predict_frames(method: Any, frames: DataLoader, heads: dict[str, dict[str, Any]], device: str
                   ) -> dict[str, np.ndarray]:
    """Protocol (a) and (b) class maps (uint8 (N, H, W)) of the overlay frames."""
    from training.evaluation import pad_to_multiple

    stride = int(method.input_spec().stride)
    images = torch.cat([b["image"] for b in frames]).to(device)  # (N, C, H, W)
    h, w = images.shape[-2:]
    out = {}
    plan = protocols(heads)
    for name, proto in plan.items():
        if proto is None:
            continue
        entry = heads[proto["head"]]
        mapping = np.asarray(entry[MAPPING_SOURCE[name]]["mapping"], dtype=np.uint8)
        probs = method.inference_net(proto["head"])(pad_to_multiple(images, stride))  # (N, K, H', W')
        clusters = probs[..., :h, :w].argmax(dim=1).cpu().numpy()
        out[name] = mapping[clusters]
    return out


def run_method(row: str, seed: int, settings: Settings, runs_dir: Path, *,
               overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config = method_config(row, seed, settings, overrides)
    run_dir = runs_dir / f"{row}_seed{seed}"
    training = train_method(config, run_dir)
    loaders, frames = scoring_loaders(settings, int(config["method_config"].get("channels", 1)))
    final = score_checkpoint(run_dir, "last", config, loaders, settings.device, frames)
    training["seconds_with_epoch_close"] = round(training["seconds"] + final["mid_epoch_closed_s"], 2)
    best_dir = ckpt_io.checkpoint_dir(run_dir, "best")
    best_step = ckpt_io.open_checkpoint(best_dir).state["step"] if best_dir is not None else None
    if best_step is None or best_step == final["step"]:
        best = {**{k: v for k, v in final.items() if k != "frames"}, "checkpoint": "best", "same_as_final": True}
    else:
        best = score_checkpoint(run_dir, "best", config, loaders, settings.device, None)
    frames_out = {f"{k}": v for k, v in final.pop("frames", {}).items()}
    resolved = _resolved_config(run_dir)
    record = {"row": row, "kind": "method", "method": config["method"], "seed": seed,
              "preset": str(row_preset(row).relative_to(REPO)) if row_preset(row).is_relative_to(REPO)
              else str(row_preset(row)),
              "overrides": overrides or {}, "method_config": resolved.get("method_config", {}),
              "train_config": resolved.get("train", {}), "training": training,
              "checkpoints": {"final": final, "best": best}, "curves": read_curves(run_dir / "metrics.jsonl"),
              "run_dir": str(run_dir)}
    return record, frames_out


def _resolved_config(run_dir: Path) -> dict[str, Any]:
    from training.config import load_yaml

    path = run_dir / "config.yaml"
    return load_yaml(path) if path.is_file() else {}


def eval_parts(settings: Settings) -> dict[str, list[str]]:
    """``eval_tuning``: the eval ids scored (``--eval-limit`` subset, or the whole split); with the whole split and
    a ``tuning_subset``, ``eval_tuning`` is that subset and ``eval_untouched`` the rest."""
    ids = split_ids(settings.split_file, settings.eval_split)
    if settings.eval_limit is not None or not settings.tuning_subset or settings.tuning_subset >= len(ids):
        return {"eval_tuning": eval_subset(ids, settings.eval_limit)}
    tuning = eval_subset(ids, settings.tuning_subset)
    seen = set(tuning)
    return {"eval_tuning": tuning, "eval_untouched": [i for i in ids if i not in seen]}


def scoring_loaders(settings: Settings, channels: int) -> tuple[dict[str, DataLoader], DataLoader]:
    root = Path(settings.data_root)
    parts = eval_parts(settings)
    loaders = {name: image_loader(labelled_spec(root, ids, channels)) for name, ids in parts.items()}
    loaders["calibration"] = image_loader(labelled_spec(root, split_ids(settings.split_file, "calibration"),
                                                        channels))
    all_ids = sorted(i for ids in parts.values() for i in ids)
    frames = image_loader(labelled_spec(root, overlay_ids(root, all_ids), channels))
    return loaders, frames


def read_curves(path: Path) -> list[dict[str, Any]]:
    """The engine's evaluations of the calibration split: step, epoch, time, mIoU, pixel accuracy, IoUs."""
    if not path.is_file():
        return []
    curves = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("kind") != "eval":
            continue
        names = rec.get("class_names") or list(NEU_CLASSES)
        curves.append({"step": rec["step"], "epoch": rec["epoch"], "elapsed_s": rec["elapsed_s"],
                       "miou": rec.get("miou"), "pixel_accuracy": rec.get("pixel_accuracy"),
                       "defect_iou": rec.get("defect_iou"), "iou": dict(zip(names, rec.get("iou") or [], strict=False)),
                       "over_miou": rec.get("over/miou")})
    return curves


# -- baselines --------------------------------------------------------------------------------------------------
def run_baseline(row: str, seed: int, settings: Settings, *, overrides: dict[str, Any] | None = None
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fit a k-means / random-CNN baseline on train images (labels unused) and score it like the methods."""
    preset = load_preset(row_preset(row))
    tuned = {k.removeprefix("method_config."): v for k, v in (overrides or {}).items()
             if k.startswith("method_config.")}
    method_cfg = {**(preset.get("method_config") or {}), "seed": seed, **tuned}
    method = build_method(preset["method"], method_cfg).to(settings.device)
    root = Path(settings.data_root)
    channels = int(method_cfg.get("channels", 1))
    fit_ids = split_ids(settings.split_file, "train")
    if settings.baseline_fit_images and len(fit_ids) > settings.baseline_fit_images:  # a seeded sample
        keep = torch.randperm(len(fit_ids), generator=torch.Generator().manual_seed(seed))
        fit_ids = sorted(fit_ids[i] for i in keep[:settings.baseline_fit_images].tolist())
    fit_spec = {"kind": "mask_folder", "root": str(neu_root(root)), "ids": fit_ids, "channels": channels,
                "masks_dir": None}
    start = time.perf_counter()
    kmeans_loss = method.fit_centroids(image_loader(fit_spec))
    seconds = time.perf_counter() - start
    loaders, frames = scoring_loaders(settings, channels)
    final = {"checkpoint": "final", "step": 0, "epoch": 0, **score_method(method, loaders, settings.device)}
    frames_out = predict_frames(method, frames, final["heads"], settings.device)
    record = {"row": row, "kind": "baseline", "method": preset["method"], "seed": seed,
              "preset": str(row_preset(row).relative_to(REPO)), "overrides": overrides or {},
              "method_config": config_to_dict(method.config), "train_config": {},
              "training": {"seconds": round(seconds, 2), "fit_images": len(fit_ids), "kmeans_loss": kmeans_loss,
                           "fit_points": int(getattr(method, "fit_points", 0))},
              "checkpoints": {"final": final, "best": {**final, "checkpoint": "best", "same_as_final": True}},
              "curves": []}
    return record, frames_out


# -- one run, resumable -----------------------------------------------------------------------------------------
def run_paths(out: Path, row: str, seed: int) -> tuple[Path, Path]:
    folder = out / f"{STEM}_runs"
    return folder / f"{row}_seed{seed}.json", folder / f"{row}_seed{seed}_frames.npz"


def run_one(row: str, seed: int, settings: Settings, *, out: Path, runs_dir: Path,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run and score one (row, seed) unless its JSON exists with the same settings; returns its record."""
    json_path, frames_path = run_paths(out, row, seed)
    if json_path.is_file():
        record = json.loads(json_path.read_text(encoding="utf-8"))
        if record.get("settings") == settings.key() and record.get("overrides", {}) == (overrides or {}):
            log.info("%s seed %d: result exists (%s), skipped", row, seed, json_path)
            return record
        raise ConfigError(f"{json_path} holds a run with other settings ({record.get('settings')}, overrides "
                          f"{record.get('overrides')}); use another --out or delete it")
    torch.set_num_threads(settings.threads)
    wall = time.perf_counter()
    if row in BASELINES or load_preset(row_preset(row))["method"] in BASELINES:
        record, frames = run_baseline(row, seed, settings, overrides=overrides)
    else:
        record, frames = run_method(row, seed, settings, runs_dir, overrides=overrides)
    ids = sorted(i for part in eval_parts(settings).values() for i in part)
    record.update(settings=settings.key(), threads=settings.threads, device=settings.device,
                  eval={"split": settings.eval_split, "images": len(ids)},
                  wall_s=round(time.perf_counter() - wall, 1), host=host_info(),
                  finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    frames_path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(frames_path, ids=np.array(overlay_ids(Path(settings.data_root), ids)), **frames)
    write_text_atomic(json_path, json.dumps(record, indent=1))
    log.info("%s seed %d: %s", row, seed, _brief(record))
    return record


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpus": os.cpu_count(), "cuda": torch.cuda.get_device_name(0)
                            if torch.cuda.is_available() else None}
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _brief(record: dict[str, Any]) -> str:
    p = record["checkpoints"]["final"]["protocols"]
    parts = [f"train {record['training']['seconds']:.0f} s"]
    for name in ("a", "b", "c"):
        if p.get(name):
            parts.append(f"({name}) mIoU {_f(p[name]['miou'])} defect IoU {_f(p[name]['defect_iou'])}")
    return ", ".join(parts)


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# -- aggregation ------------------------------------------------------------------------------------------------
SCORE_KEYS = ("pixel_accuracy", "miou", "defect_iou", *(f"iou_{c}" for c in NEU_CLASSES))


def load_records(out: Path) -> list[dict[str, Any]]:
    folder = out / f"{STEM}_runs"
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*_seed*.json"))]


def aggregate(records: Iterable[dict[str, Any]], settings_key: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """Mean / std over seeds per (row, checkpoint, eval subset, protocol); runs with other settings are left out.
    Subsets: ``all`` (every eval image scored) and ``untouched`` (those outside the tuning subset)."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    seconds: dict[str, list[float]] = {}
    for rec in records:
        if settings_key is not None and rec.get("settings") != settings_key:
            continue
        seconds.setdefault(rec["row"], []).append(rec["training"].get("seconds_with_epoch_close",
                                                                      rec["training"]["seconds"]))
        for which, entry in rec["checkpoints"].items():
            subsets = {"all": entry["protocols"], "untouched": (entry.get("untouched") or {}).get("protocols", {})}
            for subset, protos in subsets.items():
                for name, proto in protos.items():
                    if proto is not None:
                        groups.setdefault((rec["row"], which, subset, name), []).append({**proto, "seed": rec["seed"]})
    rows = []
    for (row, which, subset, name), protos in sorted(groups.items(), key=lambda kv: _row_order(kv[0])):
        stats: dict[str, Any] = {}
        for key in SCORE_KEYS:
            values = [_score(p, key) for p in protos]
            values = [v for v in values if v is not None]
            stats[key] = {"mean": statistics.fmean(values) if values else None,
                          "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}
        rows.append({"row": row, "checkpoint": which, "subset": subset, "protocol": name, "head": protos[0]["head"],
                     "k": protos[0]["k"], "mapping": protos[0]["mapping"], "seeds": sorted(p["seed"] for p in protos),
                     "train_seconds": statistics.fmean(seconds[row]), **stats})
    return rows


def _score(proto: dict[str, Any], key: str) -> float | None:
    return proto["iou"].get(key[4:]) if key.startswith("iou_") else proto.get(key)


def _row_order(key: tuple[str, ...]) -> tuple[int, str, str, str]:
    row = key[0]
    return (DEFAULT_ROWS.index(row) if row in DEFAULT_ROWS else len(DEFAULT_ROWS), *key)


# -- reports ----------------------------------------------------------------------------------------------------
PANEL_TITLES = {"a": "(a) main head k=4, Hungarian on eval", "b": "(b) over head, majority mapping from calibration",
                "c": "(c) over head, mIoU-fitted mapping from calibration"}
MAPPING_SOURCE = {"a": "same_images", "b": "calibration", "c": "calibration_miou_fit"}
PROTOCOL_TEXT = {
    "a": "(a) main head, k = 4, Hungarian one-to-one mapping fitted on the eval images",
    "b": "(b) over-clustering head where the model has one (else main), many-to-one mapping fitted on the 40 "
         "calibration images, applied to the eval images",
    "c": "(c) the head of (b), many-to-one mapping chosen to maximise the calibration images' mIoU (instead of the "
         "majority vote), applied to the eval images",
}


def write_reports(out: Path, settings: Settings | None, notes: str = "") -> dict[str, Any]:
    records = load_records(out)
    key = settings.key() if settings is not None else _common_settings(records)
    kept = [r for r in records if key is None or r.get("settings") == key]
    rows = aggregate(kept, key)
    summary = {"dataset": "NEU-Seg", "classes": list(NEU_CLASSES), "split_file": str(SPLIT_FILE.relative_to(REPO)),
               "settings": key, "protocols": PROTOCOL_TEXT, "rows": rows,
               "all_background": all_background_reference(kept),
               "runs": [{k: v for k, v in r.items() if k != "curves"} for r in kept],
               "curves": {f"{r['row']}_seed{r['seed']}": r["curves"] for r in kept if r["curves"]}}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{STEM}.json", json.dumps(summary, indent=1))
    write_text_atomic(out / f"{STEM}.md", markdown(summary, notes))
    try:
        plot_bars(rows, out / f"{STEM}.png")
        plot_curves(kept, out / f"{STEM}_curves.png")
        plot_overlays(out, kept, Path(data_root(None) if settings is None else settings.data_root))
    except Exception as e:  # a figure problem must not lose the tables
        log.warning("figures not drawn: %s", e)
    return summary


def all_background_reference(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Scores of predicting background everywhere on the eval images (from a run's ground-truth pixel counts):
    under every protocol a model that puts (nearly) every pixel in background clusters gets about this."""
    for rec in records:
        confusion = rec["checkpoints"]["final"].get("confusions", {}).get("eval", {}).get("main")
        if confusion is None:
            continue
        gt = np.asarray(confusion, dtype=np.int64).sum(axis=0)  # (n_classes,) pixels per class
        matrix = np.zeros((len(gt), len(gt)), dtype=np.int64)
        matrix[0] = gt  # every pixel predicted background
        scores = segmentation_scores(matrix, NEU_CLASSES, background=0)
        return {"pixel_accuracy": scores.pixel_accuracy, "miou": scores.miou, "defect_iou": scores.defect_iou,
                "class_pixel_share": [float(v) for v in gt / gt.sum()]}
    return None


def _common_settings(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    keys = [json.dumps(r.get("settings"), sort_keys=True) for r in records]
    if not keys:
        return None
    most = max(set(keys), key=keys.count)
    return json.loads(most)


def _ms(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f}" + (f" ± {stat['std']:.3f}" if stat["std"] is not None else "")


def markdown(summary: dict[str, Any], notes: str = "") -> str:
    s = summary["settings"] or {}
    n_eval = {r.get("eval", {}).get("images") for r in summary["runs"]}
    lines = ["# Accuracy on NEU-Seg", "",
             f"Generated by `benchmarks/accuracy.py`. Training budget {s.get('budget_s')} s of training wall-clock "
             f"per run; evaluation on {', '.join(str(n) for n in sorted(n_eval, key=str))} images of the "
             f"`{s.get('eval_split', 'eval')}` split (never trained on); the "
             "`calibration` images (inside `train`) name clusters for protocol (b) and pick `best`. "
             "Scores are fractions; mean ± std over seeds."
             + (f" Configurations were chosen looking at a fixed subset of {s['tuning_subset']} eval images "
                "(seed-0 runs, benchmarks/results/accuracy_neu_tuning.md); the `untouched` tables score only the "
                "other eval images, which no choice looked at." if s.get("tuning_subset") else ""),
             ""]
    ref = summary.get("all_background")
    if ref:
        lines += [f"Reference: predicting background everywhere scores pixel accuracy {ref['pixel_accuracy']:.3f}, "
                  f"mIoU {ref['miou']:.3f} and defect IoU 0 on these images (class pixel shares "
                  + ", ".join(f"{c} {v:.3f}" for c, v in zip(NEU_CLASSES, ref["class_pixel_share"], strict=True))
                  + "): an mIoU near it means the defects were not found; compare defect IoUs.", ""]
    if notes:
        lines += [notes, ""]
    lines += headline_table(summary["rows"])
    tables = (("final", "all", "Final weights"),
              ("final", "untouched", "Final weights, only the eval images outside the tuning subset"),
              ("best", "all", "Best checkpoint by calibration mIoU"))
    for which, subset, title in tables:
        for proto in ("a", "b", "c"):
            sel = [r for r in summary["rows"]
                   if r["checkpoint"] == which and r["subset"] == subset and r["protocol"] == proto]
            if not sel:
                continue
            lines += [f"## {title}: {PROTOCOL_TEXT[proto]}", "",
                      "| row | seeds | head (k) | train s | pixel acc. | mIoU | defect IoU | "
                      + " | ".join(f"IoU {c}" for c in NEU_CLASSES) + " |",
                      "|---|---|---|---|---|---|---|" + "---|" * len(NEU_CLASSES)]
            for r in sel:
                lines.append(f"| {r['row']} | {len(r['seeds'])} | {r['head']} ({r['k']}) | {r['train_seconds']:.0f} | "
                             f"{_ms(r['pixel_accuracy'])} | {_ms(r['miou'])} | {_ms(r['defect_iou'])} | "
                             + " | ".join(_ms(r[f'iou_{c}']) for c in NEU_CLASSES) + " |")
            lines.append("")
    lines += curves_markdown(summary["curves"])
    return "\n".join(lines) + "\n"


def headline_table(rows: list[dict[str, Any]], subset: str = "all") -> list[str]:
    """One line per row: mIoU and defect IoU of the final weights under each protocol, and the training time."""
    sel = {(r["row"], r["protocol"]): r for r in rows if r["checkpoint"] == "final" and r["subset"] == subset}
    names = list(dict.fromkeys(r for r, _ in sel))
    if not names:
        return []
    lines = ["## Headline: final weights, every eval image", "",
             "| row | seeds | train s | (a) mIoU | (a) defect IoU | (b) mIoU | (b) defect IoU | (c) mIoU | "
             "(c) defect IoU |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        cells = []
        for proto in ("a", "b", "c"):
            r = sel.get((name, proto))
            cells += [_ms(r["miou"]), _ms(r["defect_iou"])] if r else ["n/a", "n/a"]
        any_row = next(r for (n, _), r in sel.items() if n == name)
        lines.append(f"| {name} | {len(any_row['seeds'])} | {any_row['train_seconds']:.0f} | " + " | ".join(cells)
                     + " |")
    return [*lines, ""]


def curves_markdown(curves: dict[str, list[dict[str, Any]]], max_points: int = 12) -> list[str]:
    """Per-row (lowest seed) calibration scores per evaluation: the per-epoch curves of issues 3 and 4."""
    lines = ["## Training curves: engine evaluations of the 40 calibration images (main head, Hungarian on "
             "those images; over head many-to-one), lowest seed per row", ""]
    seen = set()
    for name in sorted(curves, key=lambda n: (n.rsplit("_seed", 1)[0], int(n.rsplit("_seed", 1)[1]))):
        row = name.rsplit("_seed", 1)[0]
        if row in seen:
            continue
        seen.add(row)
        points = curves[name]
        if len(points) > max_points:  # evenly thinned, the last one kept
            idx = sorted({round(i * (len(points) - 1) / (max_points - 1)) for i in range(max_points)})
            points = [points[i] for i in idx]
        lines += [f"### {name}", "", "| step | epoch | train s | pixel acc. | mIoU | "
                  + " | ".join(f"IoU {c}" for c in NEU_CLASSES) + " | over mIoU |",
                  "|---|---|---|---|---|" + "---|" * len(NEU_CLASSES) + "---|"]
        for p in points:
            lines.append(f"| {p['step']} | {p['epoch']} | {p['elapsed_s']:.0f} | {_f(p['pixel_accuracy'])} | "
                         f"{_f(p['miou'])} | " + " | ".join(_f(p["iou"].get(c)) for c in NEU_CLASSES)
                         + f" | {_f(p['over_miou'])} |")
        lines.append("")
    return lines


def plot_bars(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharey=True)
    for ax, proto in zip(axes, ("a", "b", "c"), strict=True):
        sel = [r for r in rows if r["checkpoint"] == "final" and r["subset"] == "all" and r["protocol"] == proto]
        x = np.arange(len(sel))
        for offset, key, label in ((-0.2, "miou", "mIoU"), (0.2, "defect_iou", "defect IoU")):
            means = [r[key]["mean"] or 0.0 for r in sel]
            errs = [r[key]["std"] or 0.0 for r in sel]
            ax.bar(x + offset, means, 0.4, yerr=errs, capsize=3, label=label)
        ax.set_xticks(x, [f"{r['row']}\n({r['head']} k={r['k']})" for r in sel], fontsize=8)
        ax.set_title(PANEL_TITLES[proto], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("score (mean ± std over seeds)")
    axes[0].legend()
    fig.suptitle("NEU-Seg eval split, final weights")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firsts: dict[str, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: r["seed"]):
        if rec["curves"] and rec["row"] not in firsts:
            firsts[rec["row"]] = rec
    if not firsts:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for row, rec in firsts.items():
        t = [p["elapsed_s"] for p in rec["curves"]]
        axes[0].plot(t, [p["miou"] or 0 for p in rec["curves"]], marker=".", label=row)
        axes[1].plot(t, [p["over_miou"] or np.nan for p in rec["curves"]], marker=".", label=row)
    axes[0].set_title("main head, Hungarian (calibration images)", fontsize=9)
    axes[1].set_title("over head, many-to-one (calibration images)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("training seconds")
        ax.set_ylabel("mIoU")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 60], [70, 110, 255]], dtype=np.float32)


def plot_overlays(out: Path, records: list[dict[str, Any]], root: Path) -> None:
    """Rows = overlay frames; columns = image, ground truth, each row's protocol-(b) labels (lowest seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.data.image_io import read_image, read_label

    chosen: dict[str, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: (_row_order((r["row"],)), r["seed"])):
        chosen.setdefault(rec["row"], rec)
    preds = {}
    for row, rec in chosen.items():
        path = run_paths(out, row, rec["seed"])[1]
        if path.is_file():
            with np.load(path) as data:
                if "b" in data:
                    preds[row] = (list(data["ids"]), data["b"])
    if not preds:
        return
    ids = next(iter(preds.values()))[0]
    cols = 2 + len(preds)
    fig, axes = plt.subplots(len(ids), cols, figsize=(1.6 * cols, 1.6 * len(ids)), squeeze=False)
    for i, image_id in enumerate(ids):
        image = read_image(neu_root(root) / "images" / f"{image_id}.jpg", channels=1)[..., 0]
        label = read_label(neu_root(root) / "masks" / f"{image_id}.png")
        panels = [("image", None), ("ground truth", label)] + [(row, p[1][p[0].index(image_id)])
                                                                for row, p in preds.items() if image_id in p[0]]
        for j, (title, lab) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(_overlay(image, lab))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
        axes[i, 0].set_ylabel(str(image_id), fontsize=7)
    fig.suptitle("protocol (b) labels\nred inclusion, green patches,\nblue scratches", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{STEM}_overlays.png", dpi=100)
    plt.close(fig)


def _overlay(image: np.ndarray, label: np.ndarray | None) -> np.ndarray:
    grey = image.astype(np.float32)
    grey = grey / 255.0 if grey.max() > 1.5 else grey
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if label is None:
        return rgb
    lab = np.where(label < len(NEU_CLASSES), label, 0).astype(np.int64)
    colour = COLOURS[lab] / 255.0
    alpha = np.where(lab > 0, 0.55, 0.0)[..., None]
    return rgb * (1 - alpha) + colour * alpha


# -- tuning log -------------------------------------------------------------------------------------------------
def tuning_table(folders: Sequence[Path]) -> str:
    """One markdown row per run JSON under each folder's ``accuracy_neu_runs`` (final weights; eval subset)."""
    head = ("| run | row | seed | changes | steps | train s | (a) mIoU | (a) IoU bg/inc/pat/scr | (b) head k | "
            "(b) mIoU | (b) defect IoU | (b) IoU bg/inc/pat/scr | (c) mIoU | (c) defect IoU | (c) IoU bg/inc/pat/scr |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for folder in folders:
        for rec in load_records(Path(folder)):
            p = rec["checkpoints"]["final"]["protocols"]
            a, b, c = p.get("a"), p["b"], p.get("c")
            changes = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in rec.get("overrides", {}).items()) or "preset"
            lines.append(f"| {Path(folder).name} | {rec['row']} | {rec['seed']} | {changes} | "
                         f"{rec['training'].get('steps', '-')} | {rec['training']['seconds']:.0f} | "
                         f"{_f(a['miou']) if a else 'n/a'} | {_ious(a) if a else 'n/a'} | {b['head']} {b['k']} | "
                         f"{_f(b['miou'])} | {_f(b['defect_iou'])} | {_ious(b)} | "
                         + (f"{_f(c['miou'])} | {_f(c['defect_iou'])} | {_ious(c)} |" if c else "n/a | n/a | n/a |"))
    return "\n".join(lines) + "\n"


def _ious(proto: dict[str, Any]) -> str:
    return "/".join(_f(proto["iou"].get(c), 2) for c in NEU_CLASSES)


# -- CLI --------------------------------------------------------------------------------------------------------
def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    from training.config import parse_override

    out = {}
    for item in items:
        path, value = parse_override(item)
        out[".".join(path)] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_ROWS),
                   help="rows: presets training/presets/<row>_neu.yaml (methods and baselines)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget-s", type=float, default=600.0, help="training wall-clock per method run")
    p.add_argument("--data-root", default=None, help="folder holding neu-seg/ (default $USSEG_DATA, ../shared/data)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--eval-limit", type=int, default=None, help="a fixed subset of this many eval images")
    p.add_argument("--tuning-subset", type=int, default=200,
                   help="size of the fixed eval subset tuning looked at; the rest is also scored alone (0: off)")
    p.add_argument("--train-images", nargs="*", default=None, metavar="ROW=N",
                   help=f"train a row on a seeded subset of N train images (default {DEFAULT_TRAIN_IMAGES}; "
                        "N=0: all)")
    p.add_argument("--baseline-fit-images", type=int, default=1000, help="train images a baseline's k-means sees")
    p.add_argument("--split-file", default=str(SPLIT_FILE), help="JSON with train, calibration and eval splits")
    p.add_argument("--eval-split", default="eval", help="name of the evaluation split in --split-file")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="key=value override of every method run's config (tuning); recorded in the run JSON")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument("--runs-dir", default=str(REPO / "runs" / STEM), help="run directories (checkpoints)")
    p.add_argument("--notes", default="", help="a paragraph for the markdown (machine conditions)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables and figures")
    p.add_argument("--tuning-table", nargs="+", metavar="OUT", help="print a tuning-log table of these --out folders")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    if args.tuning_table:
        print(tuning_table([Path(f) for f in args.tuning_table]), end="")
        return 0
    root = data_root(args.data_root)
    settings = Settings(budget_s=args.budget_s, eval_limit=args.eval_limit, data_root=str(root),
                        device=_device(args.device), threads=args.threads,
                        baseline_fit_images=args.baseline_fit_images, split_file=args.split_file,
                        eval_split=args.eval_split, tuning_subset=args.tuning_subset or None,
                        train_images=_train_images(args.train_images))
    out = Path(args.out)
    if not args.report_only:
        known = set(available_methods())
        for row in args.methods:
            try:
                method = load_preset(row_preset(row))["method"]
            except ConfigError as e:
                log.error("%s: %s", row, e)
                continue
            if method not in known:
                log.error("%s: method %r is not registered here (known: %s); skipped", row, method, sorted(known))
                continue
            for seed in args.seeds:
                run_one(row, seed, settings, out=out, runs_dir=Path(args.runs_dir),
                        overrides=parse_overrides(args.overrides))
    write_reports(out, settings, args.notes)
    print(f"wrote {out / (STEM + '.md')}")
    return 0


def _train_images(items: Sequence[str] | None) -> tuple[tuple[str, int], ...]:
    table = dict(DEFAULT_TRAIN_IMAGES)
    for item in items or ():
        row, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            raise ConfigError(f"--train-images expects ROW=N, got {item!r}")
        table[row.strip()] = int(n)
    return tuple(sorted(table.items()))


def _device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Settings", "aggregate", "eval_subset", "method_config", "protocols", "run_one", "score_heads",
           "write_reports"]
