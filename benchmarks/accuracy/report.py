"""The reports: per-run JSONs -> mean / std over seeds per row -> ``<stem>.json`` and ``<stem>.md`` (+ figures)."""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy.data import split_ids
from benchmarks.accuracy.records import load_records
from benchmarks.accuracy.rows import row_order
from benchmarks.accuracy.settings import Settings, default_runs_dir, stem
from benchmarks.datasets import DATASETS, REPO, BenchmarkDataset, data_root
from training.errors import ConfigError
from usseg_sdk.atomic import write_text_atomic
from usseg_sdk.metrics import segmentation_scores

log = logging.getLogger("benchmarks.accuracy")



def protocol_text(n_classes: int, n_calibration: int | str) -> dict[str, str]:
    return {
        "a": f"(a) main head, k = {n_classes}, Hungarian one-to-one mapping fitted on the eval images",
        "b": "(b) over-clustering head where the model has one (else main), many-to-one mapping fitted on the "
             f"{n_calibration} calibration images, applied to the eval images",
        "c": "(c) the head of (b), many-to-one mapping chosen to maximise the calibration images' mIoU (instead of "
             "the majority vote), applied to the eval images",
    }


def score_keys(class_names: Sequence[str]) -> tuple[str, ...]:
    return ("pixel_accuracy", "miou", "defect_iou", *(f"iou_{c}" for c in class_names))


# -- aggregation ------------------------------------------------------------------------------------------------
def aggregate(records: Iterable[dict[str, Any]], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Mean / std over seeds per (row, checkpoint, eval subset, protocol), with each row's work (mean steps,
    seconds and images seen; how many runs the wall-clock cap stopped). Subsets: ``all`` (every eval image scored)
    and ``untouched`` (those outside the tuning subset)."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    work: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        work.setdefault(rec["row"], []).append(rec["training"])
        for which, entry in rec["checkpoints"].items():
            subsets = {"all": entry["protocols"], "untouched": (entry.get("untouched") or {}).get("protocols", {})}
            for subset, protos in subsets.items():
                for name, proto in protos.items():
                    if proto is not None:
                        groups.setdefault((rec["row"], which, subset, name), []).append({**proto, "seed": rec["seed"]})
    rows = []
    for (row, which, subset, name), protos in sorted(groups.items(), key=lambda kv: row_order(kv[0])):
        stats: dict[str, Any] = {}
        for key in score_keys(class_names):
            values = [_score(p, key) for p in protos]
            values = [v for v in values if v is not None]
            stats[key] = {"mean": statistics.fmean(values) if values else None,
                          "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}
        rows.append({"row": row, "checkpoint": which, "subset": subset, "protocol": name, "head": protos[0]["head"],
                     "k": protos[0]["k"], "mapping": protos[0]["mapping"], "seeds": sorted(p["seed"] for p in protos),
                     **row_work(work[row]), **stats})
    return rows


def row_work(trainings: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over a row's runs of training seconds (with a mid-epoch close), steps and images seen; cap hits."""
    def mean(key: str) -> float | None:
        values = [t[key] for t in trainings if t.get(key) is not None]
        return statistics.fmean(values) if values else None

    return {"train_seconds": statistics.fmean(t.get("seconds_with_epoch_close", t["seconds"]) for t in trainings),
            "steps": mean("steps"), "images_seen": mean("images_seen"), "runs": len(trainings),
            "cap_hits": sum(bool(t.get("cap_hit")) for t in trainings)}


def _score(proto: dict[str, Any], key: str) -> float | None:
    return proto["iou"].get(key[4:]) if key.startswith("iou_") else proto.get(key)


def all_background_reference(records: list[dict[str, Any]], class_names: Sequence[str], background: int = 0
                             ) -> dict[str, Any] | None:
    """Scores of predicting background everywhere on the eval images (from a run's ground-truth pixel counts):
    under every protocol a model that puts (nearly) every pixel in background clusters gets about this."""
    for rec in records:
        confusion = rec["checkpoints"]["final"].get("confusions", {}).get("eval", {}).get("main")
        if confusion is None:
            continue
        gt = np.asarray(confusion, dtype=np.int64).sum(axis=0)  # (n_classes,) pixels per class
        matrix = np.zeros((len(gt), len(gt)), dtype=np.int64)
        matrix[background] = gt  # every pixel predicted background
        scores = segmentation_scores(matrix, class_names, background=background)
        return {"pixel_accuracy": scores.pixel_accuracy, "miou": scores.miou, "defect_iou": scores.defect_iou,
                "class_pixel_share": [float(v) for v in gt / gt.sum()]}
    return None


ROW_FIELDS = ("budget_steps",)  # the per-row fields of a run's settings key


def shared_settings(key: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (key or {}).items() if k not in ROW_FIELDS}


def select_runs(records: list[dict[str, Any]], settings: Settings | None) -> list[dict[str, Any]]:
    """The runs with ``settings`` (each row its own step budget); without settings, the runs that share the most
    common settings."""
    if settings is not None:
        return [r for r in records if _matches(r, settings)]
    keys = [json.dumps(shared_settings(r.get("settings")), sort_keys=True) for r in records]
    if not keys:
        return []
    common = json.loads(max(set(keys), key=keys.count))
    return [r for r in records if shared_settings(r.get("settings")) == common]


def _matches(record: dict[str, Any], settings: Settings) -> bool:
    try:
        return record.get("settings") == settings.key(record["row"])
    except ConfigError:  # a row the settings give no step budget
        return False


def settings_summary(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The settings the runs share, and each method row's step budget."""
    if not runs:
        return None
    steps = {r["row"]: r["settings"]["budget_steps"] for r in runs if r["settings"].get("budget_steps") is not None}
    return {**shared_settings(runs[0]["settings"]), **({"budget_steps": steps} if steps else {})}


# -- files ------------------------------------------------------------------------------------------------------
def write_reports(out: Path, settings: Settings | None, notes: str = "", dataset: str = "neu") -> dict[str, Any]:
    """Rebuild ``accuracy_<dataset>.json``, ``.md`` and the figures from the run JSONs under ``out`` (without
    ``settings``: of the runs with the most common settings)."""
    from benchmarks.accuracy.figures import plot_bars, plot_curves, plot_overlays

    bench = settings.benchmark if settings is not None else DATASETS[dataset]
    name = stem(bench.name)
    records = load_records(out, name)
    kept = select_runs(records, settings)
    if records and not kept:
        log.warning("none of the %d runs under %s has these settings (runs with other settings, such as the "
                    "wall-clock budgets before step budgets, are never mixed in): the report is empty", len(records),
                    out / f"{name}_runs")
    names = bench.class_names
    rows = aggregate(kept, names)
    split_file = Path(settings.split_file if settings is not None else bench.split_file)
    n_calibration = _calibration_count(split_file)
    summary = {"dataset": bench.title, "classes": list(names), "split_file": _show(split_file),
               "settings": settings_summary(kept), "protocols": protocol_text(len(names), n_calibration), "rows": rows,
               "all_background": all_background_reference(kept, names, bench.background),
               "runs": [{k: v for k, v in r.items() if k != "curves"} for r in kept],
               "curves": {f"{r['row']}_seed{r['seed']}": r["curves"] for r in kept if r["curves"]}}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{name}.json", json.dumps(summary, indent=1))
    write_text_atomic(out / f"{name}.md", markdown(summary, bench, n_calibration, notes))
    try:
        plot_bars(rows, out / f"{name}.png", bench.title)
        plot_curves(kept, out / f"{name}_curves.png")
        root = Path(settings.data_root) if settings is not None else \
            bench.mask_folder(data_root(None), default_runs_dir(bench.name) / "cache")
        plot_overlays(out, name, kept, root, names)
    except Exception as e:  # a figure problem must not lose the tables
        log.warning("figures not drawn: %s", e)
    return summary


def _calibration_count(split_file: Path) -> int | str:
    try:
        return len(split_ids(split_file, "calibration"))
    except (OSError, ValueError, ConfigError):
        return "labelled"  # "... fitted on the labelled calibration images"


def _show(path: Path) -> str:
    """The path relative to the repository when it is inside it (as committed results name it)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# -- markdown ---------------------------------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ms(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f}" + (f" ± {stat['std']:.3f}" if stat["std"] is not None else "")


def markdown(summary: dict[str, Any], bench: BenchmarkDataset, n_calibration: int | str, notes: str = "") -> str:
    names = bench.class_names
    lines = [f"# Accuracy on {bench.title}", "", _conditions(summary, bench), ""]
    ref = summary.get("all_background")
    if ref:
        lines += [f"Reference: predicting background everywhere scores pixel accuracy {ref['pixel_accuracy']:.3f}, "
                  f"mIoU {ref['miou']:.3f} and defect IoU 0 on these images (class pixel shares "
                  + ", ".join(f"{c} {v:.3f}" for c, v in zip(names, ref["class_pixel_share"], strict=True))
                  + "): an mIoU near it means the defects were not found; compare defect IoUs.", ""]
    if notes:
        lines += [notes, ""]
    lines += headline_table(summary["rows"])
    lines += protocol_tables(summary["rows"], names, summary["protocols"])
    lines += curves_markdown(summary["curves"], names, n_calibration)
    return "\n".join(lines) + "\n"


def _conditions(summary: dict[str, Any], bench: BenchmarkDataset) -> str:
    """The paragraph under the title: budget, what was scored, what tuning looked at, how labels were made."""
    s = summary["settings"] or {}
    if not summary["runs"]:
        return "Generated by `python -m benchmarks.accuracy`. No run with these settings yet."
    n_eval = {r.get("eval", {}).get("images") for r in summary["runs"]}
    text = ("Generated by `python -m benchmarks.accuracy`. " + _budget_text(s) + " Evaluation on "
            f"{', '.join(str(n) for n in sorted(n_eval, key=str))} images of the "
            f"`{s.get('eval_split', 'eval')}` split ({bench.eval_note}); the "
            "`calibration` images (inside `train`) name clusters for protocol (b) and pick `best`. "
            "Scores are fractions; mean ± std over seeds.")
    if s.get("tuning_subset"):
        text += (f" Configurations were chosen looking at a fixed subset of {s['tuning_subset']} eval images "
                 f"(seed-0 runs, {bench.tuning_log or 'the tuning log'}); the `untouched` tables score only the "
                 "other eval images, which no choice looked at.")
    if bench.labels_note:
        text += f" {bench.labels_note}"
    return text


def _budget_text(s: dict[str, Any]) -> str:
    if "budget_s" in s:  # runs from before the step budgets
        return f"Training budget {s['budget_s']} s of training wall-clock per run."
    steps = s.get("budget_steps") or {}
    table = ", ".join(f"{row} {n}" for row, n in steps.items() if n)
    return ("Training budget: a fixed number of optimiser steps per method row"
            + (f" ({table})" if table else "") + ", the same on any machine"
            + (f"; {', '.join(r for r, n in steps.items() if not n)} without one (the cap alone)"
               if any(not n for n in steps.values()) else "")
            + f". A wall-clock cap of {s.get('cap_s')} s of training per run is only a safety net: a run it stopped "
            "did less work than its row's budget and is counted under `cap hit`.")


def protocol_tables(rows: list[dict[str, Any]], class_names: Sequence[str], texts: dict[str, str]) -> list[str]:
    """One table per (checkpoint, eval subset, protocol): every score of every row, per class."""
    tables = (("final", "all", "Final weights"),
              ("final", "untouched", "Final weights, only the eval images outside the tuning subset"),
              ("best", "all", "Best checkpoint by calibration mIoU"))
    lines: list[str] = []
    for which, subset, title in tables:
        for proto in ("a", "b", "c"):
            sel = [r for r in rows if r["checkpoint"] == which and r["subset"] == subset and r["protocol"] == proto]
            if not sel:
                continue
            lines += [f"## {title}: {texts[proto]}", "",
                      "| row | seeds | head (k) | train s | pixel acc. | mIoU | defect IoU | "
                      + " | ".join(f"IoU {c}" for c in class_names) + " |",
                      "|---|---|---|---|---|---|---|" + "---|" * len(class_names)]
            for r in sel:
                lines.append(f"| {_row_name(r)} | {len(r['seeds'])} | {r['head']} ({r['k']}) | "
                             f"{r['train_seconds']:.0f} | {_ms(r['pixel_accuracy'])} | {_ms(r['miou'])} | "
                             f"{_ms(r['defect_iou'])} | "
                             + " | ".join(_ms(r[f'iou_{c}']) for c in class_names) + " |")
            lines.append("")
    return lines


def _row_name(r: dict[str, Any]) -> str:
    """The row's name, marked when the wall-clock cap stopped any of its runs short of the step budget."""
    hits = r.get("cap_hits", 0)
    return f"{r['row']} (cap hit: {hits} of {r['runs']})" if hits else r["row"]


def headline_table(rows: list[dict[str, Any]], subset: str = "all") -> list[str]:
    """One line per row: mIoU and defect IoU of the final weights under each protocol, and the training time."""
    sel = {(r["row"], r["protocol"]): r for r in rows if r["checkpoint"] == "final" and r["subset"] == subset}
    names = list(dict.fromkeys(r for r, _ in sel))
    if not names:
        return []
    lines = ["## Headline: final weights, every eval image", "",
             "| row | seeds | steps | train s | images seen | cap hit | (a) mIoU | (a) defect IoU | (b) mIoU | "
             "(b) defect IoU | (c) mIoU | (c) defect IoU |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        cells = []
        for proto in ("a", "b", "c"):
            r = sel.get((name, proto))
            cells += [_ms(r["miou"]), _ms(r["defect_iou"])] if r else ["n/a", "n/a"]
        w = next(r for (n, _), r in sel.items() if n == name)
        lines.append(f"| {name} | {len(w['seeds'])} | {_count(w.get('steps'))} | {w['train_seconds']:.0f} | "
                     f"{_count(w.get('images_seen'))} | {w.get('cap_hits', 0)} of {w.get('runs', len(w['seeds']))} | "
                     + " | ".join(cells) + " |")
    return [*lines, ""]


def _count(x: float | None) -> str:
    """A mean count over seeds: steps or images (baselines: no steps, their images are the k-means fit set)."""
    return "-" if not x else f"{x:,.0f}"


def curves_markdown(curves: dict[str, list[dict[str, Any]]], class_names: Sequence[str],
                    n_calibration: int | str, max_points: int = 12) -> list[str]:
    """Per-row (lowest seed) calibration scores per evaluation: the per-epoch curves of issues 3 and 4."""
    lines = [f"## Training curves: engine evaluations of the {n_calibration} calibration images (main head, "
             "Hungarian on those images; over head many-to-one), lowest seed per row", ""]
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
                  + " | ".join(f"IoU {c}" for c in class_names) + " | over mIoU |",
                  "|---|---|---|---|---|" + "---|" * len(class_names) + "---|"]
        for p in points:
            lines.append(f"| {p['step']} | {p['epoch']} | {p['elapsed_s']:.0f} | {fmt(p['pixel_accuracy'])} | "
                         f"{fmt(p['miou'])} | " + " | ".join(fmt(p["iou"].get(c)) for c in class_names)
                         + f" | {fmt(p['over_miou'])} |")
        lines.append("")
    return lines
