"""Where each row of the accuracy benchmark fails: per-frame defect IoU of its protocol-(c) labels, the worst frames,
and overlays of them (issue 12: "report the frames where each fails, with overlays").

For each row (its run JSON ``<out>/accuracy_<dataset>_runs/<row>_seed<k>.json`` must exist) the model is rebuilt as
the benchmark scored it: a method row from its run directory's ``last`` checkpoint (``runner.load_checkpoint``), a
baseline row fitted again with the same seed and fit images (``runner.fit_baseline``; deterministic). Every eval
frame (one a batch: frame sizes may differ) gets its protocol-(c) class map, the head's argmax through the
mapping stored in the run JSON (``scoring.class_maps``, the function that draws the benchmark's overlays), and per
frame:

* defect IoU: mean IoU over the defect classes whose union in the frame is not empty (none when the frame has no
  defect in truth or prediction; ``usseg_sdk.metrics.segmentation_scores``'s ``defect_iou``);
* defect pixels in the truth, predicted defect pixels;
* false-alarm share: predicted defect pixels on truth background / the frame's pixels.

A row's summary counts the frames with defects in the truth, their median defect IoU, the missed ones (IoU below
``MISSED_IOU``), the false-alarm frames (share above ``FALSE_ALARM_SHARE``, over every frame) and the ``WORST``
worst frames (equal IoUs: the most truth defect pixels first); "every row misses" lists the frames every row missed.
The per-frame confusions pooled over the frames must equal the run JSON's protocol-(c) confusion (``pooled`` in the
output says whether they do).

    .venv/bin/python -m benchmarks.failure_frames --dataset crackforest --rows iic anomaly kmeans_lite kmeans --seed 1

Writes ``failure_frames_<dataset>.json`` (every row's per-frame numbers, the summaries, the command), ``.md`` and
``.png`` (rows: each scored row's ``SHOWN`` worst frames, deduplicated; columns: image, ground truth, each row's
protocol-(c) labels) under ``--out``, atomically. ``--notes`` is the paragraph on what the overlays show, written
after looking at them (``--report-only --notes ...`` puts it in without scoring again).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.accuracy.data import eval_parts, image_loader, labelled_spec
from benchmarks.accuracy.figures import _legend, _overlay, _pyplot
from benchmarks.accuracy.records import run_paths
from benchmarks.accuracy.rows import ROW_STEPS, is_baseline
from benchmarks.accuracy.runner import fit_baseline, load_checkpoint, method_config
from benchmarks.accuracy.scoring import MAPPING_SOURCE, class_maps
from benchmarks.accuracy.settings import RESULTS, Settings, default_runs_dir, stem
from benchmarks.datasets import DATASETS, BenchmarkDataset, data_root
from training.errors import ConfigError
from usseg_sdk.atomic import write_bytes_atomic, write_text_atomic
from usseg_sdk.metrics import ConfusionMatrix, apply_mapping, segmentation_scores

log = logging.getLogger("failure_frames")

PROTOCOL = "c"
MISSED_IOU = 0.1  # a frame with defects in the truth whose defect IoU is below this is missed
FALSE_ALARM_SHARE = 0.01  # a frame whose false-alarm share is above this is a false-alarm frame
WORST = 5  # worst frames listed per row
SHOWN = 2  # worst frames per row in the figure


# -- per-frame numbers --------------------------------------------------------------------------------------------
def frame_scores(pred: np.ndarray, truth: np.ndarray, n_classes: int, background: int = 0) -> dict[str, Any]:
    """One frame's numbers from its class map and truth (integer (H, W); truth 255 or >= n_classes unlabelled)."""
    confusion = ConfusionMatrix(n_classes, n_classes).update(pred, truth).matrix  # [pred_class, truth]
    iou = segmentation_scores(confusion, background=background).defect_iou
    defect = np.arange(n_classes) != background
    return {"defect_iou": None if np.isnan(iou) else float(iou),
            "truth_defect_px": int(confusion[:, defect].sum()), "pred_defect_px": int(confusion[defect].sum()),
            "false_alarm_share": float(confusion[defect, background].sum() / truth.size),
            "confusion": confusion.tolist()}


def row_summary(frames: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Frame id -> ``frame_scores`` => the row's summary."""
    with_defects = {i: f for i, f in frames.items() if f["truth_defect_px"] > 0}
    ious = [f["defect_iou"] for f in with_defects.values()]
    # ties (many frames at IoU 0) go to the frame with the most defect pixels in the truth: the largest miss
    worst = sorted(with_defects, key=lambda i: (with_defects[i]["defect_iou"], -with_defects[i]["truth_defect_px"],
                                                i))
    return {"frames": len(frames), "frames_with_defects": len(with_defects),
            "median_defect_iou": float(np.median(ious)) if ious else None,
            "missed": sum(iou < MISSED_IOU for iou in ious),
            "false_alarm_frames": sum(f["false_alarm_share"] > FALSE_ALARM_SHARE for f in frames.values()),
            "median_false_alarm_share": float(np.median([f["false_alarm_share"] for f in frames.values()])),
            "frames_without_predicted_defects": sum(f["pred_defect_px"] == 0 for f in frames.values()),
            "worst": [{"id": i, "defect_iou": with_defects[i]["defect_iou"]} for i in worst[:WORST]]}


def missed_by_every_row(per_row: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Frames with defects in the truth that every row missed (defect IoU below ``MISSED_IOU``)."""
    if not per_row:
        return []
    ids = set.intersection(*(set(frames) for frames in per_row.values()))
    return sorted(i for i in ids if all(frames[i]["truth_defect_px"] > 0 and frames[i]["defect_iou"] < MISSED_IOU
                                        for frames in per_row.values()))


def pooled_scores(frames: dict[str, dict[str, Any]], background: int = 0) -> dict[str, Any]:
    """The frames' confusions summed, and their defect IoU (the benchmark's pooled number)."""
    confusion = np.sum([np.asarray(f["confusion"], dtype=np.int64) for f in frames.values()], axis=0)
    return {"confusion": confusion.tolist(),
            "defect_iou": float(segmentation_scores(confusion, background=background).defect_iou)}


def score_frames(method: Any, heads: dict[str, dict[str, Any]], batches: Iterable[tuple[str, dict[str, Any]]],
                 n_classes: int, background: int = 0, device: str = "cpu"
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """(frame id, batch of one frame) pairs -> frame id -> ``frame_scores`` of its protocol-(c) map, and the maps.
    ``heads``: the run JSON's scored heads (their mappings); ``method`` in eval mode on ``device``."""
    scores, maps = {}, {}
    for image_id, batch in batches:
        pred = class_maps(method, batch["image"].to(device), heads, (PROTOCOL,))[PROTOCOL][0]  # (H, W) uint8
        truth = batch["label"][0].numpy()
        scores[image_id] = frame_scores(pred, truth, n_classes, background)
        maps[image_id] = pred
    return scores, maps


# -- rebuilding a row as the benchmark scored it ------------------------------------------------------------------
def row_settings(record: dict[str, Any], bench: BenchmarkDataset, folder: Path, device: str) -> Settings:
    """The ``Settings`` a run was made with, from its JSON (``settings``: ``Settings.key``); checked by key."""
    key, row = record["settings"], record["row"]
    if key["split_file"] != Path(bench.split_file).name:
        raise ConfigError(f"{row}: run used split file {key['split_file']}, not {bench.split_file}")
    steps = dict(ROW_STEPS)
    if key["budget_steps"] is not None:
        steps[row] = key["budget_steps"]
    settings = Settings(eval_limit=key["eval_limit"], data_root=str(folder), dataset=bench.name,
                        budget_steps=tuple(sorted(steps.items())), cap_s=key["cap_s"], device=device,
                        threads=int(record.get("threads", 1)), baseline_fit_images=key["baseline_fit_images"],
                        split_file=str(bench.split_file), eval_split=key["eval_split"],
                        tuning_subset=key["tuning_subset"], train_images=tuple(sorted(key["train_images"].items())))
    if settings.key(row) != key:
        raise ConfigError(f"{row}: cannot rebuild the run's settings ({settings.key(row)} != {key})")
    return settings


def rebuild(record: dict[str, Any], settings: Settings, runs_dir: Path) -> Any:
    """The run's model in eval mode: its final checkpoint (a method row) or its baseline fitted again."""
    row, seed, overrides = record["row"], int(record["seed"]), record.get("overrides") or {}
    if is_baseline(row):
        fitted = fit_baseline(row, seed, settings, overrides=overrides)
        if fitted.kmeans_loss != record["training"].get("kmeans_loss"):
            log.warning("%s: the refit's k-means loss %s differs from the run's %s", row, fitted.kmeans_loss,
                        record["training"].get("kmeans_loss"))
        method = fitted.method
    else:
        config = method_config(row, seed, settings, overrides)
        method, info, _ = load_checkpoint(runs_dir / f"{row}_seed{seed}", "last", config, settings)
        if info.step != record["checkpoints"]["final"]["step"]:
            raise ConfigError(f"{row}: the run dir's last checkpoint is step {info.step}, the JSON scored step "
                              f"{record['checkpoints']['final']['step']}")
    return method.eval()


def score_row(record: dict[str, Any], settings: Settings, runs_dir: Path
              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One row: rebuild it, score every eval frame; its per-frame numbers, summary and pooled check, and maps."""
    start = time.perf_counter()
    torch.set_num_threads(settings.threads)
    method = rebuild(record, settings, runs_dir)
    rebuilt_s = time.perf_counter() - start
    final = record["checkpoints"]["final"]
    heads, proto = final["heads"], final["protocols"][PROTOCOL]
    ids = sorted(i for part in eval_parts(settings).values() for i in part)
    names, background = settings.benchmark.class_names, settings.benchmark.background
    loader = image_loader(labelled_spec(Path(settings.data_root), ids, int(method.config.channels), names),
                          batch_size=1)  # one frame a batch: frame sizes may differ
    frames, maps = score_frames(method, heads, zip(loader.dataset.ids, loader, strict=True), len(names),
                                background, settings.device)
    pooled = pooled_scores(frames, background)
    entry = heads[proto["head"]]
    expected = apply_mapping(np.asarray(final["confusions"]["eval"][proto["head"]]),
                             np.asarray(entry[MAPPING_SOURCE[PROTOCOL]]["mapping"]))
    pooled.update(json_defect_iou=proto["defect_iou"], confusion_equals_json=expected.tolist() == pooled["confusion"])
    if not pooled["confusion_equals_json"]:
        log.warning("%s: pooled per-frame confusion %s != the run JSON's %s", record["row"], pooled["confusion"],
                    expected.tolist())
    result = {"row": record["row"], "seed": record["seed"], "head": proto["head"], "mapping": proto["mapping"],
              "rebuilt": "refit" if is_baseline(record["row"]) else "checkpoint last",
              "seconds": {"rebuild": round(rebuilt_s, 1), "total": round(time.perf_counter() - start, 1)},
              "summary": row_summary(frames), "pooled": pooled, "frames": frames}
    return result, maps


# -- figure and report --------------------------------------------------------------------------------------------
def shown_frames(results: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(frame id, rows whose ``SHOWN`` worst it is), each frame once, in row order."""
    owners: dict[str, list[str]] = {}
    for row, result in results.items():
        for worst in result["summary"]["worst"][:SHOWN]:
            owners.setdefault(worst["id"], []).append(row)
    return list(owners.items())


def plot_failures(path: Path, results: dict[str, dict[str, Any]], maps: dict[str, dict[str, np.ndarray]],
                  root: Path, class_names: Sequence[str]) -> None:
    """Rows: each row's worst frames; columns: image, ground truth, each row's protocol-(c) labels."""
    from training.data.image_io import read_image, read_label

    shown = shown_frames(results)
    plt = _pyplot()
    cols = 2 + len(results)
    fig, axes = plt.subplots(len(shown), cols, figsize=(2.4 * cols, 1.75 * len(shown)), squeeze=False)
    for i, (image_id, owners) in enumerate(shown):
        image = read_image(root / "images" / f"{image_id}.jpg", channels=1)[..., 0]
        label = read_label(root / "masks" / f"{image_id}.png")
        panels = [("image", None), (f"truth ({results[owners[0]]['frames'][image_id]['truth_defect_px']} px)", label)]
        for row, result in results.items():
            iou = result["frames"][image_id]["defect_iou"]
            panels.append((f"{row}: IoU {'-' if iou is None else f'{iou:.3f}'}", maps[row][image_id]))
        for j, (title, lab) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(_overlay(image, lab, len(class_names)))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
        axes[i, 0].set_ylabel(f"{image_id}\nworst of {', '.join(owners)}", fontsize=7)
    fig.suptitle(f"protocol ({PROTOCOL}) labels on each row's {SHOWN} worst frames\n" + _legend(class_names),
                 fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def markdown(report: dict[str, Any], png_name: str) -> str:
    def iou(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"# Failure frames: {report['title']}, protocol ({PROTOCOL}) labels, seed {report['seed']}", "",
             f"`{report['command']}`", "",
             f"Per eval frame ({report['frames']} frames): defect IoU (mean over the defect classes with a non-empty "
             f"union), defect pixels in the truth and predicted, false-alarm share (predicted defect pixels on truth "
             f"background / frame pixels). Missed: a frame with defects in the truth and defect IoU < {MISSED_IOU}; "
             f"false-alarm frame: share > {FALSE_ALARM_SHARE:.0%}. Baseline rows are fitted again (same seed and fit "
             f"images), method rows load their final checkpoint; pooled: the per-frame confusions summed, against "
             f"the run JSON's protocol ({PROTOCOL}) defect IoU.", "",
             "| row | frames | with defects | median frame IoU | missed | false-alarm frames | median false-alarm "
             "share | frames with no predicted defect | pooled IoU | run JSON IoU | confusion equal | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, r in report["rows"].items():
        s, p = r["summary"], r["pooled"]
        lines.append(f"| {row} | {s['frames']} | {s['frames_with_defects']} | {iou(s['median_defect_iou'])} | "
                     f"{s['missed']} | {s['false_alarm_frames']} | {s['median_false_alarm_share']:.2%} | "
                     f"{s['frames_without_predicted_defects']} | {iou(p['defect_iou'])} | "
                     f"{iou(p['json_defect_iou'])} | {'yes' if p['confusion_equals_json'] else 'NO'} | "
                     f"{r['seconds']['total']:.0f} |")
    lines += ["", f"Worst {WORST} frames with defects (frame id: defect IoU):", ""]
    for row, r in report["rows"].items():
        worst = ", ".join(f"{w['id']}: {iou(w['defect_iou'])}" for w in r["summary"]["worst"])
        lines.append(f"- {row}: {worst}")
    every = report["missed_by_every_row"]
    lines += ["", f"Frames every row misses ({len(every)}): {', '.join(every) if every else 'none'}.", "",
              f"![failure frames]({png_name})", "", "## What the overlays show", "",
              report["notes"] or "(not written yet: rerun with --notes after looking at the figure)", ""]
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.failure_frames", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="crackforest")
    p.add_argument("--rows", nargs="+", help="benchmark rows with a run JSON for --seed")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-root", default=None,
                   help="folder holding neu-seg/ and crackforest/ (default $USSEG_DATA, ../shared/data)")
    p.add_argument("--out", default=None,
                   help="results folder: run JSONs are read and outputs written here (default benchmarks/results)")
    p.add_argument("--runs-dir", default=None, help="run directories and cache/ (default runs/accuracy_<dataset>)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--notes", default="", help="the paragraph on what the overlays show")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite the markdown (and --notes) from failure_frames_<dataset>.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    bench = DATASETS[args.dataset]
    out = Path(args.out) if args.out else RESULTS
    name = f"failure_frames_{bench.name}"
    try:
        if args.report_only:
            report = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
            report["notes"] = args.notes or report.get("notes", "")
        else:
            report = run(args, bench, out, name)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_text_atomic(out / f"{name}.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / f"{name}.md", markdown(report, f"{name}.png"))
    print(f"wrote {out / (name + '.md')}")
    return 0


def run(args: argparse.Namespace, bench: BenchmarkDataset, out: Path, name: str) -> dict[str, Any]:
    """Score every row of ``args.rows``, draw the figure; the report (what the JSON holds)."""
    if not args.rows:
        raise ConfigError("--rows is required (unless --report-only)")
    wall = time.perf_counter()
    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir(args.dataset)
    folder = bench.mask_folder(data_root(args.data_root), runs_dir / "cache")
    records = {}
    for row in args.rows:
        path = run_paths(out, stem(bench.name), row, args.seed)[0]
        if not path.is_file():
            raise ConfigError(f"{row}: no run JSON {path}")
        records[row] = json.loads(path.read_text(encoding="utf-8"))
    results, maps = {}, {}
    for row, record in records.items():
        results[row], maps[row] = score_row(record, row_settings(record, bench, folder, args.device), runs_dir)
        log.info("%s: %s, pooled defect IoU %.6f (run JSON %.6f)", row, results[row]["summary"],
                 results[row]["pooled"]["defect_iou"], results[row]["pooled"]["json_defect_iou"])
    plot_failures(out / f"{name}.png", results, maps, folder, bench.class_names)
    command = ["python -m benchmarks.failure_frames", f"--dataset {bench.name}", f"--rows {' '.join(args.rows)}",
               f"--seed {args.seed}"] + [f"--{flag.replace('_', '-')} {getattr(args, flag)}"
                                         for flag in ("data_root", "out", "runs_dir") if getattr(args, flag)]
    return {"title": bench.title, "dataset": bench.name, "seed": args.seed, "protocol": PROTOCOL,
            "command": " ".join(command), "frames": len(next(iter(results.values()))["frames"]),
            "thresholds": {"missed_iou": MISSED_IOU, "false_alarm_share": FALSE_ALARM_SHARE},
            "missed_by_every_row": missed_by_every_row({r: v["frames"] for r, v in results.items()}),
            "shown": [{"id": i, "worst_of": owners} for i, owners in shown_frames(results)],
            "notes": args.notes, "wall_s": round(time.perf_counter() - wall, 1), "device": args.device,
            "threads": torch.get_num_threads(), "rows": results}


if __name__ == "__main__":
    raise SystemExit(main())
