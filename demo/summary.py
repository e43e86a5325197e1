"""Stage 5: the one-screen summary printed at the end of ``make demo`` (and saved as ``summary.txt``).

:func:`render_summary` reads only the plain report dict that ``demo/run.py`` assembles (and writes to
``report.json``), so it can be tested and re-rendered without running anything.
"""

from __future__ import annotations

from typing import Any

RULE = "-" * 110


def render_summary(r: dict[str, Any]) -> str:
    n = r["sample"]
    lines = [RULE, f"usseg demo: {r['method']} on the bundled NEU-Seg sample ({n['train']} unlabelled frames to train "
             f"on, {n['calibration']} labelled to name clusters, {n['holdout']} held back)", RULE]
    if r["training"].get("cap_hit"):
        lines += [cap_hit_message(r["training"]), RULE]
    lines += _stages(r)
    lines += ["", *_score_table(r), ""]
    lines += _files(r)
    lines += ["", "next, in the virtualenv (source .venv/bin/activate):"]
    for command, what in r["next_commands"]:
        lines += [f"  {command}", f"      {what}"]
    lines.append(RULE)
    return "\n".join(lines)


def _stages(r: dict[str, Any]) -> list[str]:
    t, e, p = r["training"], r["export"], r["predict"]
    cal, v = e["calibration"], e["verify"]
    mapping = ", ".join(f"{k}->{c}" for k, c in enumerate(cal["mapping_names"]))
    return [
        f"1 train    preset {t['preset']}, head {t['head']} (K={t['k']}), seed {t['seed']}, {t['threads']} thread(s): "
        f"{_steps(t)} in {t['train_s']:.0f} s",
        f"2 export   {e['model']}: fp32, any HxW, {e['exporter']}, {e['seconds']:.0f} s",
        f"           verified against torch on {v['n_images']} frames: label agreement {v['label_agreement']:.6f}, "
        f"max |dp| {v['max_abs_diff_probs']:.1e}",
        f"           mapping ({cal['mode']}, {cal['n_images']} labelled frames): cluster {mapping}",
        f"3 predict  {p['frames']} held-back frames, usseg_sdk.Segmenter (onnxruntime CPU, no torch): "
        f"{1000 * p['seconds_per_frame']:.0f} ms a frame, {p['defects']} defect regions >= {p['min_area']} px",
    ]


def _score_table(r: dict[str, Any]) -> list[str]:
    names = r["class_names"]
    head = f"{'held-back frames (' + str(r['sample']['holdout']) + '), IoU in %':<44s}{'pix acc':>8s}{'mIoU':>7s}" \
           f"{'defect':>8s}  " + " ".join(f"{n[:10]:>10s}" for n in names)
    rows = [head]
    for label, s in ((f"trained {r['method']} (exported model)", r["metrics"]),
                     ("per-pixel k-means baseline (K=4)", r["baseline"]),
                     ("reference: everything background", r["all_background"])):
        ious = " ".join(f"{_pct(s['per_class'][n]['iou']):>10s}" for n in names)
        rows.append(f"{label:<44s}{_pct(s['pixel_accuracy']):>8s}{_pct(s['miou']):>7s}{_pct(s['defect_iou']):>8s}  "
                    f"{ious}")
    rows.append("mIoU averages all classes, background included, so painting nothing scores well on it; defect")
    rows.append("(the mean IoU of the defect classes) is what finding defects earns. Model and k-means name their")
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


def cap_hit_message(t: dict[str, Any]) -> str:
    """The loud line of a run the time cap stopped short of its steps."""
    return (f"!! TIME CAP HIT: training stopped at {t['steps']} of {t['max_steps']} steps after {t['cap_s']:.0f} s "
            "(DEMO_CAP_S): the scores below will NOT match README's. A very busy or slow machine: raise DEMO_CAP_S.")


def _steps(t: dict[str, Any]) -> str:
    if t.get("cap_hit"):
        return f"{t['steps']} of {t['max_steps']} steps ({t['epochs']} epochs; CAP HIT, see above)"
    return f"{t['steps']} steps ({t['epochs']} epochs)"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"
