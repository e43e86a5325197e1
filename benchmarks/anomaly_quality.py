"""How well the ``anomaly`` method's score separates defect pixels from normal ones: pixel AUROC and AP of the score map
against the defect masks (every class but background is a defect; 255 ignored), on NEU-Seg and CrackForest.

Each variant fits on the dataset's ``train`` split without labels (NEU-Seg: a seeded sample of ``--fit-images``, as
the accuracy benchmark's baselines; CrackForest: every frame, its labels unused) and scores the ``eval`` split
(NEU-Seg: the fixed 200-image tuning subset unless ``--eval-limit`` says otherwise). Variants: the preset as it is,
and the same bank without cleaning (``drop_fraction: 0``), which shows what the cleaning buys. AP's chance level is
the defect share of the pixels, written beside it. Nothing was tuned on CrackForest.

    python -m benchmarks.anomaly_quality [--datasets neu crackforest] [--out benchmarks/results]

Writes ``anomaly_quality.json`` and ``anomaly_quality.md`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from benchmarks.accuracy.data import eval_subset, image_loader, labelled_spec, split_ids
from benchmarks.datasets import DATASETS, REPO, data_root
from training.config import load_preset, preset_path
from training.methods import build_method
from usseg_sdk.atomic import write_text_atomic

log = logging.getLogger("anomaly_quality")
VARIANTS = {"preset": {}, "no cleaning": {"drop_fraction": 0.0}}
IGNORE = 255


def pixel_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores at their mean rank)."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Sum over distinct thresholds of (recall step) x precision, highest score first (tied scores one step)."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(p)[last_of_tie]
    seen = np.flatnonzero(last_of_tie) + 1
    recall_step = np.diff(np.r_[0, tp]) / n_pos
    return float((recall_step * tp / seen).sum())


def score_maps(method: Any, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every labelled pixel's score (float32) and whether it is a defect (bool), ignore pixels dropped."""
    scores, positive = [], []
    for batch in loader:
        maps = method.anomaly_map(batch["image"]).cpu().numpy()  # (B, H, W)
        labels = batch["label"].numpy()
        keep = labels != IGNORE
        scores.append(maps[keep].astype(np.float32))
        positive.append(labels[keep] > 0)
    return np.concatenate(scores), np.concatenate(positive)


def speed(method: Any, size: tuple[int, int], threads: int, runs: int, workdir: Path) -> dict[str, Any]:
    """Export ``method`` (fp32, static ``size``) and time ``Segmenter.predict`` on a grey frame of that size; the
    bank's share of the ONNX file and the median / p90 milliseconds of ``runs`` predictions after 2 warm-ups."""
    from export.pipeline import ExportOptions, export_method
    from usseg_sdk import Segmenter
    from usseg_sdk.config import SegmenterConfig

    out = workdir / f"anomaly_{size[0]}x{size[1]}"
    export_method(method, ExportOptions(out=out, input_size=size, verify=False))
    onnx_path = out / "model.onnx"
    frame = (np.random.default_rng(0).random(size) * 255).astype(np.uint8)
    with Segmenter(onnx_path, config=SegmenterConfig(intra_op_threads=threads)) as seg:
        for _ in range(2):
            seg.predict(frame)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            seg.predict(frame)
            times.append(1000 * (time.perf_counter() - start))
    bank_mb = method.bank.numel() * 4 / 2**20  # the bank convolution's weight (its bias adds bank_size floats)
    return {"size": list(size), "threads": threads, "runs": runs, "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)), "onnx_mb": onnx_path.stat().st_size / 2**20,
            "bank_mb": bank_mb, "bank_size": int(method.bank.shape[0]), "feature_dim": int(method.bank.shape[1])}


def run_dataset(name: str, root: Path, cache: Path, fit_images: int, eval_limit: int | None,
                seed: int, speed_runs: int = 0) -> dict[str, Any]:
    dataset = DATASETS[name]
    folder = dataset.mask_folder(root, cache)
    preset = load_preset(preset_path("anomaly_neu"))
    channels = int(preset["method_config"].get("channels", 1))
    fit_ids = split_ids(dataset.split_file, "train")
    if fit_images and len(fit_ids) > fit_images:
        keep = torch.randperm(len(fit_ids), generator=torch.Generator().manual_seed(seed))[:fit_images]
        fit_ids = sorted(fit_ids[i] for i in keep.tolist())
    eval_ids = eval_subset(split_ids(dataset.split_file, dataset.eval_split), eval_limit)
    fit_spec = {"kind": "mask_folder", "root": str(folder), "ids": fit_ids, "channels": channels, "masks_dir": None}
    # one frame a batch: CrackForest mixes 320x480 and 480x320 frames
    eval_loader = image_loader(labelled_spec(folder, eval_ids, channels, dataset.class_names), batch_size=1)
    out: dict[str, Any] = {"fit_images": len(fit_ids), "eval_images": len(eval_ids), "variants": {}}
    for variant, overrides in VARIANTS.items():
        config = {**preset["method_config"], "seed": seed, **overrides}
        method = build_method("anomaly", config)
        start = time.perf_counter()
        fit_log = method.fit_centroids(image_loader(fit_spec, batch_size=1))
        fit_s = time.perf_counter() - start
        scores, positive = score_maps(method, eval_loader)
        threshold = float(method.threshold)
        predicted = scores > threshold
        inter, union = int((predicted & positive).sum()), int((predicted | positive).sum())
        out["defect_share"] = float(positive.mean())
        out["variants"][variant] = {
            "overrides": overrides, "fit_seconds": round(fit_s, 1), "fit": fit_log,
            "auroc": pixel_auroc(scores, positive), "ap": average_precision(scores, positive),
            "threshold_defect_iou": inter / union if union else float("nan"),
            "predicted_share": float(predicted.mean())}
        log.info("%s %s: %s", name, variant, {k: v for k, v in out["variants"][variant].items() if k != "fit"})
        if speed_runs and variant == "preset":
            out["speed"] = speed(method, (256, 1600), 2, speed_runs, cache / "anomaly_speed")
            log.info("%s speed: %s", name, out["speed"])
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Anomaly score quality (`anomaly` method)", "",
             "Generated by `python -m benchmarks.anomaly_quality`. Pixel AUROC and AP of the anomaly score (mean "
             "squared distance to the k nearest memory-bank entries; the `anomaly_neu` preset, on CrackForest "
             "unchanged, grey) against the defect masks (every non-background class is a defect). "
             "`defect IoU @ threshold`: the binary decision the exported graph makes (score above the fitted "
             "threshold) against the defect mask. Fitted without labels on the train split; "
             f"seed {results['seed']}; one torch thread; fit seconds depend on the machine's load.", "",
             "| dataset | variant | fit images | eval images | defect share (AP chance) | AUROC | AP | "
             "defect IoU @ threshold | predicted share | fit s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in results["datasets"].items():
        for variant, v in res["variants"].items():
            lines.append(f"| {name} | {variant} | {res['fit_images']} | {res['eval_images']} | "
                         f"{res['defect_share']:.3f} | {v['auroc']:.3f} | {v['ap']:.3f} | "
                         f"{v['threshold_defect_iou']:.3f} | {v['predicted_share']:.3f} | {v['fit_seconds']:.0f} |")
    for name, res in results["datasets"].items():
        if "speed" in res:
            sp = res["speed"]
            h, w = sp["size"]
            lines += ["", f"Speed of the `preset` model fitted on {name}, exported fp32 at {h}x{w}, through "
                      f"`Segmenter.predict` with {sp['threads']} onnxruntime threads on this 2-core CPU (shared with "
                      f"other jobs): median {sp['median_ms']:.0f} ms, p90 {sp['p90_ms']:.0f} ms over {sp['runs']} "
                      f"frames; ONNX file {sp['onnx_mb']:.1f} MB, of which the bank ({sp['bank_size']} x "
                      f"{sp['feature_dim']} float32) {sp['bank_mb']:.1f} MB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["neu", "crackforest"], choices=sorted(DATASETS))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    parser.add_argument("--fit-images", type=int, default=1000)
    parser.add_argument("--eval-limit", type=int, default=200, help="NEU-Seg eval images (0: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed-runs", type=int, default=10, help="timed 256x1600 predictions (0: no speed check)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    root = data_root(args.data_root)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "anomaly_quality.json"
    results: dict[str, Any] = {"seed": args.seed, "datasets": {}}
    if previous.is_file():  # datasets not re-run keep their results (written after each dataset)
        old = json.loads(previous.read_text(encoding="utf-8"))
        if old.get("seed") == args.seed:
            results = old
    for name in args.datasets:
        limit = (args.eval_limit or None) if name == "neu" else None
        speed_runs = args.speed_runs if name == "neu" else 0
        results["datasets"][name] = run_dataset(name, root, Path(args.cache), args.fit_images, limit, args.seed,
                                                speed_runs)
        write_text_atomic(previous, json.dumps(results, indent=2) + "\n")
        write_text_atomic(out / "anomaly_quality.md", markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
