"""`make demo`: train, export, calibrate and run an unsupervised segmenter on the bundled NEU-Seg sample.

    make demo                                   # or: .venv/bin/python demo/run.py
    DEMO_METHOD=picie DEMO_STEPS=60 make demo
    DEMO_OUT=/tmp/demo make demo

1. train DEMO_METHOD on the sample's 32 ``train`` frames without their masks, for DEMO_STEPS optimiser steps
   (``training.engine.fit``, with a progress bar; DEMO_CAP_S seconds is only a safety cap);
2. export it to ONNX, fit the cluster -> class mapping on the 6 labelled ``calibration`` frames and verify the
   exported graph against torch (``export.pipeline.export_checkpoint``);
3. run ``usseg_sdk.Segmenter`` on the 8 ``holdout`` frames (never trained on) and score it against their masks;
   the per-pixel k-means baseline is scored the same way, for comparison;
4. write DEMO_OUT (default ``demo_out/``): overlays, predictions, RLE CSV, defects, metrics, the model folder;
5. print a one-screen summary.

The environment variables are described in ``demo/settings.py``. Exit status: 0 done; 1 the exported model failed
verification (numbers in ``DEMO_OUT/model/verify.failed.json``); 2 anything else went wrong (the reason printed);
3 done, but the time cap stopped training before DEMO_STEPS, so the numbers do not match README's (the summary
and the report say so).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python demo/run.py`: make the repository importable, ahead of any install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.calibrated_scores import kmeans_baseline
from demo.export_model import export_command, export_run
from demo.holdout import MIN_AREA, HoldoutResult, predict_holdout, write_holdout
from demo.panels import write_panels
from demo.sample import Sample
from demo.settings import ROOT, SAMPLE_DIR, DemoError, DemoSettings
from demo.summary import cap_hit_message, render_summary
from demo.training_run import TrainingOutcome, check_head, demo_config, train
from usseg_sdk.atomic import write_text_atomic

# What the demo writes into DEMO_OUT, and removes from it before a new run (nothing else there is touched).
OUTPUTS = ("run", "model", "calibration", "overlays", "predictions", "predictions.csv", "defects.jsonl",
           "metrics.json", "report.json", "summary.txt")


def run_demo(settings: DemoSettings, *, progress: bool = True) -> dict[str, Any]:
    """Run every stage into ``settings.out``; returns the report (also written to ``report.json``)."""
    sample = Sample.open(SAMPLE_DIR)
    out = settings.out
    clear_outputs(out)
    calibration = sample.copy_split("calibration", out / "calibration")
    _stage(f"training {settings.method} (preset {settings.preset}) on {len(sample.splits['train'])} unlabelled "
           "frames, " + (f"{settings.steps} steps (safety cap {settings.cap_s:.0f} s)" if settings.steps
                         else f"for {settings.cap_s:.0f} s (DEMO_STEPS=0: the time cap alone)"))
    config = demo_config(settings, sample)
    check_head(config, settings.head)
    trained = train(config, out / "run", threads=settings.threads, progress=progress)
    _stage(f"exporting to ONNX, calibrating on {len(sample.splits['calibration'])} labelled frames, verifying")
    start = time.monotonic()
    exported = export_run(out / "run", out / "model", settings.head, calibration)
    export_s = time.monotonic() - start
    _stage(f"predicting {len(sample.splits['holdout'])} held-back frames with usseg_sdk.Segmenter")
    holdout = predict_holdout(out / "model", sample)
    baseline = kmeans_baseline(sample, seed=settings.seed)["heads"]["main"]["calibration"]
    write_holdout(holdout, out, {"method": settings.method, "head": settings.head, "baseline_kmeans": baseline})
    captions = {i: ", ".join(f"{name} IoU {_pct(iou)}" for name, iou in s["true_defects"].items())
                for i, s in holdout.per_frame.items()}
    write_panels(out / "overlays", holdout.ids, holdout.frames, holdout.masks, holdout.predictions,
                 f"prediction ({settings.method})", captions)
    report = build_report(settings, sample, config, trained, exported, export_s, holdout, baseline, calibration)
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / "summary.txt", render_summary(report) + "\n")
    return report


def clear_outputs(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DemoError(f"DEMO_OUT={out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def build_report(settings: DemoSettings, sample: Sample, config: dict[str, Any], trained: TrainingOutcome,
                 exported: Any, export_s: float, holdout: HoldoutResult, baseline: dict[str, Any],
                 calibration: Path) -> dict[str, Any]:
    out, names = settings.out, sample.class_names
    cal = exported.calibration.report()
    verify = {k: exported.verify[k] for k in ("passed", "label_agreement", "cluster_agreement", "max_abs_diff_probs",
                                               "n_images")}
    k = exported.meta.n_clusters
    return {
        "method": settings.method, "class_names": names, "out": _show(out),
        "sample": {s: len(ids) for s, ids in sample.splits.items()},
        "training": {"preset": settings.preset, "head": settings.head, "k": k, "steps": trained.steps,
                     "epochs": trained.epochs, "stopped": trained.stopped, "train_s": trained.train_s,
                     "wall_s": trained.wall_s, "seed": settings.seed, "threads": settings.threads,
                     "cap_s": settings.cap_s, "max_steps": settings.steps, "cap_hit": trained.cap_hit,
                     "batch_size": config["train"]["batch_size"]},
        "export": {"model": _show(out / "model" / "model.onnx"), "exporter": exported.meta.exporter,
                   "seconds": export_s, "verify": verify,
                   "calibration": {**cal, "mapping_names": [names[c] for c in cal["mapping"]]}},
        "predict": {"frames": len(holdout.ids), "seconds_per_frame": holdout.predict_s / len(holdout.ids),
                    "defects": sum(s["defects"] for s in holdout.per_frame.values()), "min_area": MIN_AREA},
        "metrics": holdout.scores.to_dict(), "baseline": baseline,
        "all_background": holdout.all_background.to_dict(),
        "next_commands": next_commands(settings, calibration),
    }


def next_commands(settings: DemoSettings, calibration: Path) -> list[tuple[str, str]]:
    """(command, what it does) pairs for the summary."""
    out = settings.out
    return [
        (f"usseg predict samples/neu-seg/images --model {_show(out / 'model')} --out {_show(out / 'all_frames')}",
         "segment every sample frame with the exported model (overlays, label maps, RLE)"),
        (f"python -m training fit --preset {settings.preset} --data IMAGES --set data.eval=null "
         "--set train.time_budget_s=1800 --out runs/mine", "train on your own unlabelled frames (IMAGES: a folder)"),
        (export_command(Path("runs/mine"), Path("runs/mine/export"), settings.head, Path("LABELLED")),
         f"export it, naming the clusters from a few labelled frames (layout as {_show(calibration)})"),
    ]


def _show(path: Path) -> str:
    """A path relative to the current directory when it is inside it (shorter commands), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _stage(text: str) -> None:
    print(f"== {text}", flush=True)


def setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # torchvision-less registration notes, not ours


def main() -> int:
    setup_logging()
    from export.errors import ExportError, VerificationError
    from training.errors import TrainingError
    from usseg_sdk.errors import UssegError

    start = time.monotonic()
    try:
        settings = DemoSettings.from_env()
        report = run_demo(settings)
    except VerificationError as e:
        print(f"demo FAILED: the exported model did not pass verification: {'; '.join(e.report.get('failures', []))}",
              file=sys.stderr)
        return 1
    except (DemoError, TrainingError, ExportError, UssegError, OSError) as e:
        print(f"demo FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: show where, keep the documented exit status
        traceback.print_exc()
        print("demo FAILED with an unexpected error (traceback above)", file=sys.stderr)
        return 2
    print(render_summary(report))
    print(f"demo done in {time.monotonic() - start:.0f} s (repository: {ROOT})")
    if report["training"]["cap_hit"]:
        print(cap_hit_message(report["training"]), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
