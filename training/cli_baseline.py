"""``python -m training baseline``: score per-pixel k-means or random-CNN + k-means with the engine's evaluation.

    python -m training baseline --kind kmeans --data samples/neu-seg --k 4
    python -m training baseline --kind random-cnn --data ../shared/data/neu-seg --k 4 --k-over 12 --seed 0 \\
        --class-names background,inclusion,patches,scratches --split-file benchmarks/splits/neu_seg.json \\
        --fit-split train --eval-split eval --calibration-split calibration --out baseline.json

The baseline (``training.methods.baselines``) is fitted on ``--data`` (labels, if any, unused), then its
predictions on the labelled split are streamed into one cluster confusion per head by the engine's
:func:`training.evaluation.cluster_confusions` and scored by :func:`training.evaluation.score_protocols`:

* ``same_images``: the cluster -> class mapping is fitted on the evaluated images themselves (IIC's "IID"
  protocol): Hungarian one-to-one when the head has at most as many clusters as there are classes, many-to-one
  otherwise (over-clustering).
* ``calibration`` (with ``--calibration-split`` / ``--calibration-spec``): the mapping is fitted on the
  calibration images and applied to the evaluation images (how a line names clusters from a few labelled frames).

``--data DIR`` is read as a ``mask_folder`` when ``DIR/images`` exists (``DIR/masks`` makes it labelled), else
as a ``folder`` of images; ``--data-spec`` / ``--eval-spec`` give full dataset specs (JSON or YAML) instead.
Without ``--eval-data`` / ``--eval-spec`` the labelled ``--data`` is evaluated (the fit and evaluation images are
then the same, IIC's "IID" setting). ``--split-file`` is the split file of ``--data``: it selects the fitted images
(``--fit-split``) and, only when ``--data`` is also the scored folder, the scored ones (``--eval-split``,
``--calibration-split``); a separate ``--eval-data`` folder takes its own ``--eval-split-file``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from training.config import parse_override, set_dotted
from training.data import build_dataset
from training.errors import ConfigError, DataError
from training.evaluation import evaluate_baseline
from training.loaders import image_loader
from training.methods.base import build_method, config_to_dict
from usseg_sdk.atomic import write_text_atomic

KINDS = {"kmeans": "kmeans", "random-cnn": "random_cnn", "random_cnn": "random_cnn"}  # CLI name -> registry name


# -- dataset specs ------------------------------------------------------------------------------------------------
def read_spec(path: str | Path) -> dict[str, Any]:
    """A dataset spec from a JSON or YAML file."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read dataset spec {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"dataset spec {path} is not valid JSON/YAML: {e}") from e
    if not isinstance(spec, dict):
        raise ConfigError(f"dataset spec {path} must hold a mapping with a 'kind' key")
    return spec


def spec_for_folder(root: str | Path) -> dict[str, Any]:
    """``mask_folder`` when ``root/images`` exists (labelled when ``root/masks`` does too), else ``folder``."""
    root = Path(root)
    if (root / "images").is_dir():
        return {"kind": "mask_folder", "root": str(root), "masks_dir": "masks" if (root / "masks").is_dir() else None}
    return {"kind": "folder", "root": str(root)}


def with_split(spec: dict[str, Any], split_file: str | None, split: str | None) -> dict[str, Any]:
    spec = dict(spec)
    if split_file is not None:
        spec["split_file"] = split_file
    if split is not None:
        spec["split"] = split
    return spec


def _specs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(fit spec, eval spec, calibration spec or None) from the command line."""
    if args.data_spec:
        fit = read_spec(args.data_spec)
        if args.data:
            fit["root"] = args.data
    elif args.data:
        fit = spec_for_folder(args.data)
    else:
        raise ConfigError("give the images to fit on: --data DIR or --data-spec FILE")
    own_eval = not (args.eval_spec or args.eval_data)  # the labelled --data itself is scored
    if args.eval_spec:
        evaluation = read_spec(args.eval_spec)
        if args.eval_data:
            evaluation["root"] = args.eval_data
    elif args.eval_data:
        evaluation = spec_for_folder(args.eval_data)
    else:
        evaluation = {k: v for k, v in fit.items() if k not in ("split", "split_file", "ids")}
    channels = channels_of(args, fit)
    fit = {**with_split(fit, args.split_file, args.fit_split), "channels": channels, "crop": None}  # whole images
    labelled: dict[str, Any] = {"channels": channels}  # what the labelled specs share
    if args.class_names:
        labelled["class_names"] = [s.strip() for s in args.class_names.split(",") if s.strip()]
    # --split-file belongs to --data: a separate evaluation folder has its own ids (--eval-split-file)
    eval_split_file = args.eval_split_file or (args.split_file if own_eval else None)
    evaluation = {**_labelled_split(evaluation, eval_split_file, args.eval_split), **labelled}
    calibration = None
    if args.calibration_spec:
        calibration = {**read_spec(args.calibration_spec), **labelled}
    elif args.calibration_split:
        calibration = _labelled_split(evaluation, eval_split_file, args.calibration_split)
    return fit, evaluation, calibration


def _labelled_split(spec: dict[str, Any], split_file: str | None, split: str | None) -> dict[str, Any]:
    """A JSON split file only selects a labelled split when one is named (the fit split is not the scored one)."""
    if split is None and split_file is not None and Path(split_file).suffix.lower() == ".json":
        split_file = None
    return with_split(spec, split_file, split)


def channels_of(args: argparse.Namespace, fit_spec: Mapping[str, Any]) -> int:
    """``--channels``, else the fit spec's ``channels``, else 1 (grey)."""
    return int(args.channels or fit_spec.get("channels") or 1)


def method_config(args: argparse.Namespace, channels: int) -> dict[str, Any]:
    config: dict[str, Any] = {"n_clusters": args.k, "over_clusters": args.k_over, "channels": channels,
                              "seed": args.seed}
    if args.pixels_per_image is not None:
        config["pixels_per_image"] = args.pixels_per_image or None
    if args.features is not None:
        config["features"] = args.features
    for text in args.overrides:
        path, value = parse_override(text)
        set_dotted(config, path, value)
    return config


# -- CLI -----------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=["kmeans", "random-cnn"], help="which baseline")
    parser.add_argument("--data", metavar="DIR",
                        help="images to fit on, whole (mask_folder root: DIR/images [+ DIR/masks], or an image folder)")
    parser.add_argument("--data-spec", metavar="FILE", help="dataset spec (JSON/YAML) of the images to fit on")
    parser.add_argument("--eval-data", metavar="DIR", help="labelled images to score (default: --data)")
    parser.add_argument("--eval-spec", metavar="FILE", help="dataset spec (JSON/YAML) of the labelled images")
    parser.add_argument("--calibration-spec", metavar="FILE",
                        help="dataset spec of labelled images the cluster -> class mapping is fitted on")
    parser.add_argument("--split-file", metavar="FILE",
                        help="JSON split file (or id list) of --data: --fit-split selects the images fitted on, and "
                             "when --data is also scored, --eval-split / --calibration-split the labelled ones")
    parser.add_argument("--eval-split-file", metavar="FILE",
                        help="split file of --eval-data (default: none, every image; EVAL/splits.json with "
                             "--eval-split alone)")
    parser.add_argument("--fit-split", metavar="NAME", help="split of --data to fit on (e.g. train)")
    parser.add_argument("--eval-split", metavar="NAME", help="split to score (e.g. eval)")
    parser.add_argument("--calibration-split", metavar="NAME",
                        help="split whose fitted mapping is applied to the scored split (e.g. calibration)")
    parser.add_argument("--class-names", metavar="A,B,...", help="class names in label order (background first)")
    parser.add_argument("--k", type=int, default=4, help="clusters of the main head (default 4)")
    parser.add_argument("--k-over", type=int, default=0, help="clusters of an over-clustering head (0 = none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the net init, pixel sample and k-means")
    parser.add_argument("--channels", type=int, choices=[1, 3],
                        help="grey (1) or RGB (3) input (default: the spec's channels, else 1)")
    parser.add_argument("--features", choices=["pixel", "patch", "local_stats"], help="kmeans features")
    parser.add_argument("--pixels-per-image", type=int, help="pixels each image gives k-means (0 = all)")
    parser.add_argument("--fit-images", type=int, help="fit on a seeded random subset of this many images")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the baseline's config (YAML value), e.g. --set kmeans_iters=20")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (1 for mixed sizes)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a crowded machine)")
    parser.add_argument("--out", metavar="FILE", help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    fit_spec, eval_spec, calib_spec = _specs(args)
    fit_set = build_dataset(fit_spec, train=True)
    eval_set = build_dataset(eval_spec, train=False)
    if not eval_set.has_labels:
        raise DataError(f"the evaluation images ({eval_set!r}) have no labels: give --eval-data with masks")
    calib_set = build_dataset(calib_spec, train=False) if calib_spec is not None else None
    class_names = eval_set.class_names
    method = build_method(KINDS[args.kind], method_config(args, fit_spec["channels"]))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    loader = dict(batch_size=args.batch_size, num_workers=args.workers)
    result = evaluate_baseline(
        method, image_loader(fit_set, limit=args.fit_images, seed=args.seed, **loader),  # type: ignore[arg-type]
        image_loader(eval_set, **loader), class_names=class_names,  # type: ignore[arg-type]
        calibration_loader=None if calib_set is None else image_loader(calib_set, **loader),  # type: ignore[arg-type]
        device=device)
    report = {"method": method.name, "config": config_to_dict(method.config),
              "fit": {"spec": fit_spec, "images": min(len(fit_set), args.fit_images or len(fit_set))},
              "eval": {"spec": eval_spec, "images": len(eval_set)},
              "calibration": None if calib_set is None else {"spec": calib_spec, "images": len(calib_set)},
              **result}
    print(format_table(report["heads"]))
    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def format_table(heads: Mapping[str, Mapping[str, Any]]) -> str:
    """Plain-text rows: head, K, matching, mapping source, pixel accuracy, mIoU, defect IoU, per-class IoU."""
    lines = []
    for head, entry in heads.items():
        for protocol in ("same_images", "calibration"):
            s = entry.get(protocol)
            if s is None:
                continue
            ious = " ".join(f"{name}={_pct(v['iou'])}" for name, v in s["per_class"].items())
            lines.append(f"{head:5s} K={entry['k']:<3d} {entry['matching']:11s} mapping on {protocol:11s} "
                         f"acc={_pct(s['pixel_accuracy'])} mIoU={_pct(s['miou'])} "
                         f"defect IoU={_pct(s['defect_iou'])}  {ious}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"
