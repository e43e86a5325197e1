"""The command line of the accuracy benchmark (``python -m benchmarks.accuracy``; the package docstring has
examples)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import benchmarks.accuracy as package
from benchmarks.accuracy.report import write_reports
from benchmarks.accuracy.rows import DEFAULT_CAP_S, DEFAULT_ROWS, DEFAULT_TRAIN_IMAGES, ROW_STEPS, row_preset
from benchmarks.accuracy.runner import run_one
from benchmarks.accuracy.settings import RESULTS, Settings, default_runs_dir
from benchmarks.accuracy.tuning import tuning_table
from benchmarks.datasets import DATASETS, data_root
from training.config import load_preset
from training.errors import ConfigError
from training.methods.base import available_methods

log = logging.getLogger("benchmarks.accuracy")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    from training.config import parse_override

    out = {}
    for item in items:
        path, value = parse_override(item)
        out[".".join(path)] = value
    return out


def parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: the old `--budget-s 600` (seconds) must not be read as `--budget-steps 600`
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=package.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter, allow_abbrev=False)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="neu",
                   help="what to train and score on (outputs accuracy_<dataset>.*); every dataset runs the NEU-Seg "
                        "presets unchanged")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_ROWS),
                   help="rows: presets training/presets/<row>_neu.yaml (methods and baselines)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget-steps", nargs="+", default=None, metavar="N|ROW=N",
                   help=f"optimiser steps per method run: N for every row, ROW=N for one (default {ROW_STEPS}, "
                        "benchmarks/accuracy/rows.py); 0: no step budget, the cap alone (the old wall-clock budget)")
    p.add_argument("--cap-s", type=float, default=DEFAULT_CAP_S,
                   help="training wall-clock safety cap per method run, seconds; a run it stops is marked")
    p.add_argument("--data-root", default=None,
                   help="folder holding neu-seg/ and crackforest/ (default $USSEG_DATA, ../shared/data), or the "
                        "dataset's own folder")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--eval-limit", type=int, default=None, help="a fixed subset of this many eval images")
    p.add_argument("--tuning-subset", type=int, default=None,
                   help="size of the fixed eval subset tuning looked at; the rest is also scored alone (0: off; "
                        "default: NEU-Seg 200, CrackForest none)")
    p.add_argument("--train-images", nargs="*", default=None, metavar="ROW=N",
                   help=f"train a row on a seeded subset of N train images (default {DEFAULT_TRAIN_IMAGES}; "
                        "N=0: all)")
    p.add_argument("--baseline-fit-images", type=int, default=1000, help="train images a baseline's k-means sees")
    p.add_argument("--split-file", default=None,
                   help="JSON with train, calibration and eval splits (default benchmarks/splits/<dataset>.json)")
    p.add_argument("--eval-split", default=None, help="name of the evaluation split in --split-file (default eval)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="key=value override of every method run's config (tuning); recorded in the run JSON")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument("--runs-dir", default=None,
                   help="run directories (checkpoints) and cache/ (converted datasets); "
                        "default runs/accuracy_<dataset>")
    p.add_argument("--notes", default="", help="a paragraph for the markdown (machine conditions)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables and figures")
    p.add_argument("--tuning-table", nargs="+", metavar="OUT", help="print a tuning-log table of these --out folders")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    if args.tuning_table:
        print(tuning_table([Path(f) for f in args.tuning_table]), end="")
        return 0
    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir(args.dataset)
    out = Path(args.out)
    try:
        settings = settings_from_args(args, runs_dir)
        if not args.report_only:
            run_rows(args.methods, args.seeds, settings, out=out, runs_dir=runs_dir,
                     overrides=parse_overrides(args.overrides))
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_reports(out, settings, args.notes)
    print(f"wrote {out / (settings.stem + '.md')}")
    return 0


def settings_from_args(args: argparse.Namespace, runs_dir: Path) -> Settings:
    """The run settings; the dataset's mask folder is found (CrackForest: converted into runs_dir/cache once)."""
    bench = DATASETS[args.dataset]
    folder = bench.mask_folder(data_root(args.data_root), runs_dir / "cache")
    tuning = bench.tuning_subset if args.tuning_subset is None else args.tuning_subset
    return Settings(eval_limit=args.eval_limit, data_root=str(folder), dataset=bench.name,
                    budget_steps=budget_steps(args.budget_steps, args.methods), cap_s=args.cap_s,
                    device=_device(args.device), threads=args.threads,
                    baseline_fit_images=args.baseline_fit_images, split_file=args.split_file or str(bench.split_file),
                    eval_split=args.eval_split or bench.eval_split, tuning_subset=tuning or None,
                    train_images=_train_images(args.train_images))


def run_rows(rows: Sequence[str], seeds: Sequence[int], settings: Settings, *, out: Path, runs_dir: Path,
             overrides: dict[str, Any]) -> None:
    """Every (row, seed) in turn; a row whose preset is missing or whose method is not registered is skipped, a
    method row without a step budget stops everything before the first run."""
    known = set(available_methods())
    runnable = []
    for row in rows:
        try:
            method = load_preset(row_preset(row))["method"]
        except ConfigError as e:
            log.error("%s: %s", row, e)
            continue
        if method not in known:
            log.error("%s: method %r is not registered here (known: %s); skipped", row, method, sorted(known))
            continue
        settings.steps(row)  # ConfigError now, not after hours of other rows
        runnable.append(row)
    for row in runnable:
        for seed in seeds:
            run_one(row, seed, settings, out=out, runs_dir=runs_dir, overrides=overrides)


def budget_steps(items: Sequence[str] | None, rows: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``ROW_STEPS`` with ``--budget-steps`` applied: ``N`` sets every row given (and every row of the table),
    ``ROW=N`` one row."""
    table = dict(ROW_STEPS)
    for item in items or ():
        row, sep, n = item.rpartition("=")
        if not n.strip().isdigit():
            raise ConfigError(f"--budget-steps expects N or ROW=N (N >= 0), got {item!r}")
        for name in [row.strip()] if sep else sorted({*table, *rows}):
            table[name] = int(n)
    return tuple(sorted(table.items()))


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
