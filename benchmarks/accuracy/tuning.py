"""The tuning log (NEU-Seg): one markdown row per run of several ``--out`` folders
(benchmarks/results/accuracy_neu_tuning.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.accuracy.records import load_records
from benchmarks.accuracy.report import fmt
from benchmarks.accuracy.settings import stem
from benchmarks.datasets import NEU_CLASSES


def tuning_table(folders: Sequence[Path]) -> str:
    """One markdown row per run JSON under each folder's ``accuracy_neu_runs`` (final weights; eval subset)."""
    head = ("| run | row | seed | changes | steps | train s | (a) mIoU | (a) IoU bg/inc/pat/scr | (b) head k | "
            "(b) mIoU | (b) defect IoU | (b) IoU bg/inc/pat/scr | (c) mIoU | (c) defect IoU | (c) IoU bg/inc/pat/scr |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for folder in folders:
        for rec in load_records(Path(folder), stem("neu")):
            p = rec["checkpoints"]["final"]["protocols"]
            a, b, c = p.get("a"), p["b"], p.get("c")
            changes = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in rec.get("overrides", {}).items()) or "preset"
            lines.append(f"| {Path(folder).name} | {rec['row']} | {rec['seed']} | {changes} | "
                         f"{rec['training'].get('steps', '-')} | {rec['training']['seconds']:.0f} | "
                         f"{fmt(a['miou']) if a else 'n/a'} | {_ious(a) if a else 'n/a'} | {b['head']} {b['k']} | "
                         f"{fmt(b['miou'])} | {fmt(b['defect_iou'])} | {_ious(b)} | "
                         + (f"{fmt(c['miou'])} | {fmt(c['defect_iou'])} | {_ious(c)} |" if c else "n/a | n/a | n/a |"))
    return "\n".join(lines) + "\n"


def _ious(proto: dict[str, Any]) -> str:
    return "/".join(fmt(proto["iou"].get(c), 2) for c in NEU_CLASSES)
