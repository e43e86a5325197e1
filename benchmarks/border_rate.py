"""Does a model paint defects along the frame border? Issue 13 item 4, measured on NEU-Seg's eval split.

For an exported model (a folder from ``python -m export``, calibrated so that its labels are classes), predicts
every eval frame through ``usseg_sdk.Segmenter`` and compares the share of pixels labelled defect (any class but
the background) in the outermost ``--ring`` pixels of each frame with the share inside, for the prediction and for
the ground-truth masks. A zero-padding ring shows as a border share far above the interior's while the masks'
shares are alike; a clean model's ratio is close to the masks' ratio. Optionally also with ``ignore_border`` set.

    .venv/bin/python benchmarks/border_rate.py --model runs/iic_neu_export --out benchmarks/results/border_rate
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.datasets import NEU_SPLIT_FILE, data_root, neu_root
from usseg_sdk import Segmenter
from usseg_sdk.atomic import write_text_atomic
from usseg_sdk.config import SegmenterConfig


def ring_mask(shape: tuple[int, int], ring: int) -> np.ndarray:
    inner = np.zeros(shape, bool)
    inner[ring:-ring, ring:-ring] = True
    return ~inner


def border_rates(model: Path, root: Path, ids: list[str], ring: int, ignore_border: int = 0) -> dict[str, float]:
    counts = np.zeros((2, 2, 2))  # [pred|gt, ring|interior, defect pixels|pixels]
    config = SegmenterConfig(device="cpu", ignore_border=ignore_border or None)
    with Segmenter(model, config=config) as seg:
        background = seg.meta.background_id
        for ident in ids:
            frame = cv2.imread(str(root / "images" / f"{ident}.jpg"), cv2.IMREAD_GRAYSCALE)
            gt = cv2.imread(str(root / "masks" / f"{ident}.png"), cv2.IMREAD_UNCHANGED)
            labels = seg.predict(frame).labels
            outer = ring_mask(frame.shape, ring)
            for row, defect in enumerate((labels != background, gt != 0)):
                for col, where in enumerate((outer, ~outer)):
                    counts[row, col] += (defect[where].sum(), where.sum())
    share = counts[..., 0] / counts[..., 1]
    return {"pred_ring": share[0, 0], "pred_interior": share[0, 1], "gt_ring": share[1, 0],
            "gt_interior": share[1, 1], "pred_ratio": share[0, 0] / share[0, 1], "gt_ratio": share[1, 0] / share[1, 1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="calibrated export folder")
    p.add_argument("--data-root", help="folder holding neu-seg/ (default $USSEG_DATA, ../shared/data)")
    p.add_argument("--split", default="eval")
    p.add_argument("--limit", type=int, default=0, help="first N frames of the split (0: all)")
    p.add_argument("--ring", type=int, default=2, help="border width in pixels")
    p.add_argument("--ignore-border", type=int, default=0, help="also score with this ignored border")
    p.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    root = neu_root(data_root(args.data_root))
    ids = json.loads(NEU_SPLIT_FILE.read_text())[args.split]
    ids = ids[: args.limit] if args.limit else ids
    result = {"model": str(args.model), "split": args.split, "frames": len(ids), "ring": args.ring,
              "rates": border_rates(args.model, root, ids, args.ring)}
    if args.ignore_border:
        result["with_ignore_border"] = {"ignore_border": args.ignore_border,
                                        "rates": border_rates(args.model, root, ids, args.ring, args.ignore_border)}
    print(json.dumps(result, indent=2))
    if args.out:
        r = result["rates"]
        md = (f"# Defect share along the frame border ({len(ids)} NEU-Seg {args.split} frames, "
              f"outer {args.ring} px)\n\n"
              f"Model: `{args.model}`.\n\n| | border | interior | border / interior |\n|---|---|---|---|\n"
              f"| prediction | {r['pred_ring']:.4f} | {r['pred_interior']:.4f} | {r['pred_ratio']:.2f} |\n"
              f"| ground truth | {r['gt_ring']:.4f} | {r['gt_interior']:.4f} | {r['gt_ratio']:.2f} |\n")
        write_text_atomic(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
        write_text_atomic(args.out.with_suffix(".md"), md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
