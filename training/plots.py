"""``curves.png``: the training loss and the evaluation mIoU / pixel accuracy of a run, from its metrics.jsonl.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), so it works headless
and never disturbs a caller's interactive session.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from usseg_sdk.atomic import atomic_path

log = logging.getLogger(__name__)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON lines of a metrics log; a torn last line (a killed writer) is skipped."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get("kind") == kind and isinstance(r.get(key), int | float) and "step" in r:
            xs.append(r["step"])
            ys.append(r[key])
    return xs, ys


def plot_curves(metrics_path: str | os.PathLike, out_path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the PNG (atomically) and return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_eval = fig.subplots(1, 2)
    xs, ys = _series(records, "train", "loss")
    ax_loss.plot(xs, ys, color="tab:blue", lw=1.2, marker="o" if len(xs) < 30 else None, ms=3)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_loss.grid(alpha=0.3)
    plotted = False
    for key, color in (("miou", "tab:red"), ("pixel_accuracy", "tab:green")):
        xs, ys = _series(records, "eval", key)
        if xs:
            ax_eval.plot(xs, ys, marker="o", ms=3, color=color, label=key)
            plotted = True
    ax_eval.set(xlabel="step", title="evaluation (main head)")
    ax_eval.grid(alpha=0.3)
    if plotted:
        ax_eval.legend(loc="lower right")
    else:
        ax_eval.text(0.5, 0.5, "no evaluation split", ha="center", va="center", transform=ax_eval.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    return out_path
