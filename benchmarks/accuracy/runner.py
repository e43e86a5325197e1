"""One (row, seed) run: train (or fit a baseline), score the final and best checkpoints, write the run JSON.

A run whose JSON exists with the same settings is skipped; a training whose run directory says it finished is
not trained again; an interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.accuracy.data import (
    eval_parts,
    image_loader,
    labelled_spec,
    overlay_ids,
    scoring_loaders,
    split_ids,
    training_spec,
)
from benchmarks.accuracy.records import run_paths, write_npz
from benchmarks.accuracy.report import fmt
from benchmarks.accuracy.rows import is_baseline, row_preset
from benchmarks.accuracy.scoring import predict_frames, score_method
from benchmarks.accuracy.settings import Settings
from benchmarks.datasets import REPO
from training import checkpoint as ckpt_io
from training.config import load_preset
from training.data import build_dataset
from training.engine import fit
from training.errors import ConfigError, TrainingError
from training.loaders import train_loader
from training.methods.base import FitContext, build_method, config_to_dict
from usseg_sdk.atomic import write_text_atomic

log = logging.getLogger("benchmarks.accuracy")

TRAINED_MARKER = "benchmark_training.json"  # in a run dir: training finished (a rerun must not train further)


# -- methods ----------------------------------------------------------------------------------------------------
def method_config(row: str, seed: int, settings: Settings, overrides: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The engine config of one run: the row's preset on the dataset's train split (images only), calibration as
    data.eval, the step budget (``train.max_steps``), the wall-clock cap (``train.time_budget_s``) and the seed.
    ``overrides``: dotted keys -> values (tuning)."""
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
    config["data"]["eval"] = labelled_spec(root, split_ids(settings.split_file, "calibration"), channels,
                                           settings.benchmark.class_names)
    train = config.setdefault("train", {})
    train.update(max_steps=settings.steps(row) or None, time_budget_s=float(settings.cap_s), seed=int(seed),
                 num_workers=0, device=settings.device,
                 epochs=max(int(train.get("epochs", 1)), 100_000))  # only the budget (or the cap) stops the run
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
    budget = config["train"].get("max_steps")
    summary = {"seconds": round(result.elapsed_s, 2), "steps": result.step, "epochs": result.epoch,
               "stopped": result.stopped, "best_step": result.best_step, "resumed": resume,
               "images_seen": result.step * int(config["train"].get("batch_size", 16)),
               "budget_steps": budget, "cap_s": config["train"].get("time_budget_s"),
               # the cap stopped a run that had a step budget: fewer steps than the row's contract
               "cap_hit": bool(budget) and result.stopped == "time_budget"}
    if summary["cap_hit"]:
        log.warning("%s: the %.0f s cap stopped training at step %d of %d: this run did less work than its row's "
                    "budget (marked in the JSON and the tables)", run_dir, summary["cap_s"], result.step, budget)
    write_text_atomic(marker, json.dumps(summary, indent=1))
    return summary


def close_epoch(method: Any, config: dict[str, Any], state: dict[str, Any]) -> float:
    """Run ``on_epoch_end`` for a checkpoint taken inside an epoch; returns the seconds it took (0 otherwise).

    PiCIE refits its inference centroids there; without it a budget stop mid-epoch would leave the centroids of
    the previous epoch's net. The time counts as training time.
    """
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


def load_checkpoint(run_dir: Path, which: str, config: dict[str, Any], settings: Settings
                    ) -> tuple[Any, Any, float]:
    """The method of ``checkpoints/<which>`` as the benchmark scores it: loaded, its epoch closed if the checkpoint
    was taken inside one. Returns the method, its checkpoint info and the seconds the closing took."""
    found = ckpt_io.checkpoint_dir(run_dir, which)
    if found is None:
        raise TrainingError(f"{run_dir}: no checkpoints/{which}")
    method, info = ckpt_io.load_method(found, device=settings.device)
    state = ckpt_io.open_checkpoint(found).state
    torch.manual_seed(int(config["train"]["seed"]) + 7919)  # the epoch-closing pass draws from the global RNG
    extra_s = close_epoch(method, config, state)
    return method, info, extra_s


def score_checkpoint(run_dir: Path, which: str, config: dict[str, Any], loaders: dict[str, DataLoader],
                     settings: Settings, frames: DataLoader | None) -> dict[str, Any]:
    """Load ``checkpoints/<which>``, close its epoch if needed, score it on eval (and calibration for mapping)."""
    method, info, extra_s = load_checkpoint(run_dir, which, config, settings)
    device = settings.device
    entry = {"checkpoint": which, "step": info.step, "epoch": info.epoch, "mid_epoch_closed_s": round(extra_s, 2),
             "calibration_miou_at_save": (info.metrics.get("eval") or {}).get("miou"),
             **score_method(method, loaders, device, settings.benchmark.class_names, settings.benchmark.background)}
    if frames is not None:
        entry["frames"] = predict_frames(method, frames, entry["heads"], device)
    return entry


def run_method(row: str, seed: int, settings: Settings, runs_dir: Path, *,
               overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config = method_config(row, seed, settings, overrides)
    run_dir = runs_dir / f"{row}_seed{seed}"
    training = train_method(config, run_dir)
    loaders, frames = scoring_loaders(settings, int(config["method_config"].get("channels", 1)))
    final = score_checkpoint(run_dir, "last", config, loaders, settings, frames)
    training["seconds_with_epoch_close"] = round(training["seconds"] + final["mid_epoch_closed_s"], 2)
    best_dir = ckpt_io.checkpoint_dir(run_dir, "best")
    best_step = ckpt_io.open_checkpoint(best_dir).state["step"] if best_dir is not None else None
    if best_step is None or best_step == final["step"]:
        best = {**{k: v for k, v in final.items() if k != "frames"}, "checkpoint": "best", "same_as_final": True}
    else:
        best = score_checkpoint(run_dir, "best", config, loaders, settings, None)
    frames_out = {f"{k}": v for k, v in final.pop("frames", {}).items()}
    resolved = _resolved_config(run_dir)
    record = {"row": row, "kind": "method", "method": config["method"], "seed": seed,
              "preset": str(row_preset(row).relative_to(REPO)) if row_preset(row).is_relative_to(REPO)
              else str(row_preset(row)),
              "overrides": overrides or {}, "method_config": resolved.get("method_config", {}),
              "train_config": resolved.get("train", {}), "training": training,
              "checkpoints": {"final": final, "best": best},
              "curves": read_curves(run_dir / "metrics.jsonl", settings.benchmark.class_names),
              "run_dir": str(run_dir)}
    return record, frames_out


def _resolved_config(run_dir: Path) -> dict[str, Any]:
    from training.config import load_yaml

    path = run_dir / "config.yaml"
    return load_yaml(path) if path.is_file() else {}


def read_curves(path: Path, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """The engine's evaluations of the calibration split: step, epoch, time, mIoU, pixel accuracy, IoUs."""
    if not path.is_file():
        return []
    curves = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("kind") != "eval":
            continue
        names = rec.get("class_names") or list(class_names)
        curves.append({"step": rec["step"], "epoch": rec["epoch"], "elapsed_s": rec["elapsed_s"],
                       "miou": rec.get("miou"), "pixel_accuracy": rec.get("pixel_accuracy"),
                       "defect_iou": rec.get("defect_iou"), "iou": dict(zip(names, rec.get("iou") or [], strict=False)),
                       "over_miou": rec.get("over/miou")})
    return curves


# -- baselines --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaselineFit:
    """A baseline fitted as the benchmark fits it (:func:`fit_baseline`)."""

    method: Any
    preset: dict[str, Any]
    channels: int
    fit_ids: list[str]
    seconds: float
    kmeans_loss: Any


def fit_baseline(row: str, seed: int, settings: Settings, *, overrides: dict[str, Any] | None = None
                 ) -> BaselineFit:
    """Build a k-means / random-CNN / anomaly baseline with ``seed`` and fit it on the train images (labels unused;
    a ``seed``-drawn sample of ``settings.baseline_fit_images`` when there are more): deterministic, so a row's
    baseline can be fitted again exactly (``benchmarks/failure_frames.py``)."""
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
    fit_spec = {"kind": "mask_folder", "root": str(root), "ids": fit_ids, "channels": channels,
                "masks_dir": None}
    start = time.perf_counter()
    # one frame a batch: a dataset may mix frame sizes (CrackForest holds 320x480 and 480x320 frames)
    kmeans_loss = method.fit_centroids(image_loader(fit_spec, batch_size=1))
    return BaselineFit(method, preset, channels, fit_ids, time.perf_counter() - start, kmeans_loss)


def run_baseline(row: str, seed: int, settings: Settings, *, overrides: dict[str, Any] | None = None
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fit a k-means / random-CNN baseline on train images (labels unused) and score it like the methods."""
    fitted = fit_baseline(row, seed, settings, overrides=overrides)
    method, preset, fit_ids, seconds, kmeans_loss = (fitted.method, fitted.preset, fitted.fit_ids, fitted.seconds,
                                                     fitted.kmeans_loss)
    loaders, frames = scoring_loaders(settings, fitted.channels)
    scores = score_method(method, loaders, settings.device, settings.benchmark.class_names,
                          settings.benchmark.background)
    final = {"checkpoint": "final", "step": 0, "epoch": 0, **scores}
    frames_out = predict_frames(method, frames, final["heads"], settings.device)
    record = {"row": row, "kind": "baseline", "method": preset["method"], "seed": seed,
              "preset": str(row_preset(row).relative_to(REPO)), "overrides": overrides or {},
              "method_config": config_to_dict(method.config), "train_config": {},
              "training": {"seconds": round(seconds, 2), "steps": 0, "images_seen": len(fit_ids), "cap_hit": False,
                           "fit_images": len(fit_ids), "kmeans_loss": kmeans_loss,
                           "fit_points": int(getattr(method, "fit_points", 0))},
              "checkpoints": {"final": final, "best": {**final, "checkpoint": "best", "same_as_final": True}},
              "curves": []}
    return record, frames_out


# -- one run, resumable -----------------------------------------------------------------------------------------
def run_one(row: str, seed: int, settings: Settings, *, out: Path, runs_dir: Path,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run and score one (row, seed) unless its JSON exists with the same settings; returns its record."""
    json_path, frames_path = run_paths(out, settings.stem, row, seed)
    if json_path.is_file():
        record = json.loads(json_path.read_text(encoding="utf-8"))
        if record.get("settings") == settings.key(row) and record.get("overrides", {}) == (overrides or {}):
            log.info("%s seed %d: result exists (%s), skipped", row, seed, json_path)
            return record
        raise ConfigError(f"{json_path} holds a run with other settings ({record.get('settings')}, overrides "
                          f"{record.get('overrides')}); use another --out or delete it")
    torch.set_num_threads(settings.threads)
    wall = time.perf_counter()
    if is_baseline(row):
        record, frames = run_baseline(row, seed, settings, overrides=overrides)
    else:
        record, frames = run_method(row, seed, settings, runs_dir, overrides=overrides)
    ids = sorted(i for part in eval_parts(settings).values() for i in part)
    record.update(settings=settings.key(row), threads=settings.threads, device=settings.device,
                  eval={"split": settings.eval_split, "images": len(ids)},
                  wall_s=round(time.perf_counter() - wall, 1), host=host_info(),
                  finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    frames_path.parent.mkdir(parents=True, exist_ok=True)
    frame_ids = overlay_ids(Path(settings.data_root), ids, len(settings.benchmark.class_names))
    write_npz(frames_path, ids=np.array(frame_ids), **frames)
    write_text_atomic(json_path, json.dumps(record, indent=1))
    log.info("%s seed %d: %s", row, seed, _brief(record))
    return record


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
    training = record["training"]
    parts = [f"{training.get('steps', 0)} steps, train {training['seconds']:.0f} s"
             + (" (CAP HIT)" if training.get("cap_hit") else "")]
    for name in ("a", "b", "c"):
        if p.get(name):
            parts.append(f"({name}) mIoU {fmt(p[name]['miou'])} defect IoU {fmt(p[name]['defect_iou'])}")
    return ", ".join(parts)
