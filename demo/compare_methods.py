"""Which method should the demo default to? Train each on the sample as the demo does and score every head.

    .venv/bin/python demo/compare_methods.py --out compare.json
    .venv/bin/python demo/compare_methods.py --methods iic picie --steps 0 --cap-s 30   # the same 30 s for each

Each method trains exactly as ``make demo`` trains it (``demo.training_run.demo_config``: the method's preset in
``demo.settings.METHODS``, the sample's ``train`` split without labels, ``--steps`` steps (default: the demo's step
count of the method; 0 = the time cap alone), at most ``--cap-s`` seconds), one after the other. Every head is
scored on the holdout frames with the mapping fitted on the calibration frames (Hungarian for K = classes,
many-to-one for an over-clustering head), in torch (``demo.calibrated_scores``); the per-pixel k-means baseline is
scored the same way. Runs go to a temporary folder unless ``--runs DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.calibrated_scores import head_scores, kmeans_baseline
from demo.sample import Sample
from demo.settings import DEFAULT_CAP_S, METHODS, SAMPLE_DIR, DemoSettings
from demo.training_run import demo_config, train


def compare(methods: list[str], cap_s: float, steps: int | None, runs: Path, seed: int = 0,
            threads: int = 1) -> dict:
    sample = Sample.open(SAMPLE_DIR)
    start = time.monotonic()
    rows = {"kmeans": {"heads": kmeans_baseline(sample, seed=seed)["heads"]}}
    rows["kmeans"]["seconds"] = round(time.monotonic() - start, 1)
    from training.checkpoint import load_method

    for name in methods:
        settings = DemoSettings.from_env({"DEMO_METHOD": name})
        settings = replace(settings, cap_s=cap_s, seed=seed,
                           steps=settings.steps if steps is None else steps or None)
        config = demo_config(settings, sample)
        outcome = train(config, runs / name, threads=threads)
        method, _ = load_method(outcome.run_dir, prefer="last")
        rows[name] = {"preset": settings.preset, "steps": outcome.steps, "stopped": outcome.stopped,
                      "train_s": round(outcome.train_s, 1), "wall_s": round(outcome.wall_s, 1),
                      "heads": head_scores(method, sample, config["method_config"]["channels"])}
        print(format_row(name, rows[name]), flush=True)
    return rows


def format_row(name: str, row: dict) -> str:
    lines = []
    for head, entry in row["heads"].items():
        s = entry["calibration"]
        ious = " ".join(f"{k}={_pct(v['iou'])}" for k, v in s["per_class"].items())
        steps = row.get("steps", "-")
        lines.append(f"{name:8s} {head:5s} K={entry['k']:<3d} {entry['matching']:11s} steps={steps!s:>5s} "
                     f"acc={_pct(s['pixel_accuracy'])} mIoU={_pct(s['miou'])} defect IoU={_pct(s['defect_iou'])} "
                     f"({ious}) [same-images mIoU {_pct(entry['same_images']['miou'])}]")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--steps", type=int, help="steps per method (default: the demo's; 0: the time cap alone)")
    p.add_argument("--cap-s", type=float, default=DEFAULT_CAP_S, help="training wall-clock cap per method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the demo's default: 1)")
    p.add_argument("--runs", type=Path, help="keep the run directories here")
    p.add_argument("--out", type=Path, help="write the table as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="demo-compare-") as tmp:
        rows = compare(args.methods, args.cap_s, args.steps, args.runs or Path(tmp), args.seed, args.threads)
    print("\n".join(format_row(name, row) for name, row in rows.items()))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
