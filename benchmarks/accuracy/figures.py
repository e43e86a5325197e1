"""The figures: scores per row and protocol, calibration curves, and overlays of a few eval frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy.records import run_paths
from benchmarks.accuracy.rows import row_order

PANEL_TITLES = {"a": "(a) main head k=4, Hungarian on eval", "b": "(b) over head, majority mapping from calibration",
                "c": "(c) over head, mIoU-fitted mapping from calibration"}
COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 60], [70, 110, 255]], dtype=np.float32)  # class 0 unpainted
COLOUR_NAMES = ("", "red", "green", "blue")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharey=True)
    for ax, proto in zip(axes, ("a", "b", "c"), strict=True):
        sel = [r for r in rows if r["checkpoint"] == "final" and r["subset"] == "all" and r["protocol"] == proto]
        x = np.arange(len(sel))
        for offset, key, label in ((-0.2, "miou", "mIoU"), (0.2, "defect_iou", "defect IoU")):
            means = [r[key]["mean"] or 0.0 for r in sel]
            errs = [r[key]["std"] or 0.0 for r in sel]
            ax.bar(x + offset, means, 0.4, yerr=errs, capsize=3, label=label)
        ax.set_xticks(x, [f"{r['row']}\n({r['head']} k={r['k']})" for r in sel], fontsize=8)
        ax.set_title(PANEL_TITLES[proto], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("score (mean ± std over seeds)")
    axes[0].legend()
    fig.suptitle(f"{title} eval split, final weights")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    firsts: dict[str, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: r["seed"]):
        if rec["curves"] and rec["row"] not in firsts:
            firsts[rec["row"]] = rec
    if not firsts:
        return
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for row, rec in firsts.items():
        t = [p["elapsed_s"] for p in rec["curves"]]
        axes[0].plot(t, [p["miou"] or 0 for p in rec["curves"]], marker=".", label=row)
        axes[1].plot(t, [p["over_miou"] or np.nan for p in rec["curves"]], marker=".", label=row)
    axes[0].set_title("main head, Hungarian (calibration images)", fontsize=9)
    axes[1].set_title("over head, many-to-one (calibration images)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("training seconds")
        ax.set_ylabel("mIoU")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_overlays(out: Path, stem: str, records: list[dict[str, Any]], root: Path, class_names: Sequence[str]
                  ) -> None:
    """Rows = overlay frames; columns = image, ground truth, each row's protocol-(b) labels (lowest seed).
    ``root``: the mask folder (images/, masks/)."""
    from training.data.image_io import read_image, read_label

    preds = _overlay_predictions(out, stem, records)
    if not preds:
        return
    plt = _pyplot()
    ids = next(iter(preds.values()))[0]
    cols = 2 + len(preds)
    fig, axes = plt.subplots(len(ids), cols, figsize=(1.6 * cols, 1.6 * len(ids)), squeeze=False)
    for i, image_id in enumerate(ids):
        image = read_image(root / "images" / f"{image_id}.jpg", channels=1)[..., 0]
        label = read_label(root / "masks" / f"{image_id}.png")
        panels = [("image", None), ("ground truth", label)] + [(row, p[1][p[0].index(image_id)])
                                                                for row, p in preds.items() if image_id in p[0]]
        for j, (title, lab) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(_overlay(image, lab, len(class_names)))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
        axes[i, 0].set_ylabel(str(image_id), fontsize=7)
    fig.suptitle("protocol (b) labels\n" + _legend(class_names), fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{stem}_overlays.png", dpi=100)
    plt.close(fig)


def _legend(class_names: Sequence[str]) -> str:
    """"red inclusion, green patches,\nblue scratches": two classes a line."""
    names = [f"{COLOUR_NAMES[c]} {name}" for c, name in enumerate(class_names) if c][:len(COLOUR_NAMES) - 1]
    return ",\n".join(", ".join(names[i:i + 2]) for i in range(0, len(names), 2))


def _overlay_predictions(out: Path, stem: str, records: list[dict[str, Any]]
                         ) -> dict[str, tuple[list[str], np.ndarray]]:
    """Row -> (frame ids, protocol-(b) labels) of its lowest-seed run that saved frames."""
    chosen: dict[str, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: (row_order((r["row"],)), r["seed"])):
        chosen.setdefault(rec["row"], rec)
    preds = {}
    for row, rec in chosen.items():
        path = run_paths(out, stem, row, rec["seed"])[1]
        if path.is_file():
            with np.load(path) as data:
                if "b" in data:
                    preds[row] = (list(data["ids"]), data["b"])
    return preds


def _overlay(image: np.ndarray, label: np.ndarray | None, n_classes: int) -> np.ndarray:
    grey = image.astype(np.float32)
    grey = grey / 255.0 if grey.max() > 1.5 else grey
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if label is None:
        return rgb
    lab = np.where(label < min(n_classes, len(COLOURS)), label, 0).astype(np.int64)
    colour = COLOURS[lab] / 255.0
    alpha = np.where(lab > 0, 0.55, 0.0)[..., None]
    return rgb * (1 - alpha) + colour * alpha
