"""Stage 5: the one-screen summary printed at the end of ``make demo`` (and saved as ``summary.txt``).

:func:`render_summary` reads only the plain report dict that ``demo/run.py`` assembles (and writes to
``report.json``), so it can be tested and re-rendered without running anything.
"""

from __future__ import annotations

from typing import Any

RULE = "-" * 100


def render_summary(r: dict[str, Any]) -> str:
    lines = [RULE, f"usseg demo: {r['method']} on the bundled NEU-Seg sample ({r['sample']['train']} unlabelled "
             f"training frames, {r['sample']['calibration']} labelled calibration frames, "
             f"{r['sample']['holdout']} held-back frames)", RULE]
    lines += _stages(r)
    lines += ["", *_score_table(r), ""]
    lines += _files(r)
    lines += ["", "next:", *[f"  {c}" for c in r["next_commands"]], RULE]
    return "\n".join(lines)


def _stages(r: dict[str, Any]) -> list[str]:
    t, e, p = r["training"], r["export"], r["predict"]
    cal = e["calibration"]
    mapping = ", ".join(f"{k}->{c}" for k, c in enumerate(cal["mapping_names"]))
    v = e["verify"]
    return [
        f"1 train    preset {t['preset']}, head {t['head']} (K={t['k']}): {_steps(t)} ({t['epochs']} epochs) in "
        f"{t['train_s']:.0f} s, {t['threads']} thread(s), seed {t['seed']}; stopped by {t['stopped']}",
        f"2 export   {e['model']} ({e['exporter']}, fp32, any HxW) in {e['seconds']:.0f} s; verified against "
        f"torch: label agreement {v['label_agreement']:.6f}, max |dp| {v['max_abs_diff_probs']:.1e}",
        f"           mapping ({cal['mode']}, from {cal['n_images']} labelled frames): cluster -> class {mapping}",
        f"3 predict  {p['frames']} holdout frames through usseg_sdk.Segmenter (onnxruntime CPU, no torch): "
        f"{1000 * p['seconds_per_frame']:.1f} ms a frame, {p['defects']} defect regions (>= {p['min_area']} px)",
    ]


def _score_table(r: dict[str, Any]) -> list[str]:
    names = r["class_names"]
    head = f"{'holdout, ' + str(r['sample']['holdout']) + ' frames never trained on':<44s}{'pix acc':>8s}{'mIoU':>7s}" \
           f"{'defect':>8s}  " + " ".join(f"{n[:10]:>10s}" for n in names)
    rows = [head]
    for label, s in ((f"trained {r['method']} (exported model)", r["metrics"]),
                     ("per-pixel k-means baseline (K=4)", r["baseline"]),
                     ("reference: everything background", r["all_background"])):
        ious = " ".join(f"{_pct(s['per_class'][n]['iou']):>10s}" for n in names)
        rows.append(f"{label:<44s}{_pct(s['pixel_accuracy']):>8s}{_pct(s['miou']):>7s}{_pct(s['defect_iou']):>8s}  "
                    f"{ious}")
    rows.append("IoU in %. mIoU averages all 4 classes, background included, so painting nothing scores well on it;")
    rows.append("defect = mean IoU of the defect classes, what finding defects earns. Model and k-means name their")
    rows.append("clusters on the same calibration frames.")
    return rows


def _files(r: dict[str, Any]) -> list[str]:
    out = r["out"]
    return [f"files in {out}/:",
            "  overlays/<id>.png            frame | ground truth | prediction (open these)",
            "  predictions/<id>.png         class-id maps;  predictions.csv  Severstal RLE;  defects.jsonl  regions",
            "  metrics.json                 the scores above, per class and per frame;  summary.txt  this screen",
            "  model/                       model.onnx, model.json, verify.json (the deployable folder)",
            "  run/                         the training run: config.yaml, metrics.jsonl, curves.png, checkpoints/"]


def _steps(t: dict[str, Any]) -> str:
    if t["max_steps"] and t["steps"] < t["max_steps"]:
        return f"{t['steps']} of {t['max_steps']} steps (the time budget came first: a busy CPU)"
    return f"{t['steps']} steps"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"
