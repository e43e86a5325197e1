"""CLI: write a near-duplicate-aware train / calibration / eval split file of an images/ + masks/ dataset.

The rule is in :mod:`training.data.splits`. Regenerate ``benchmarks/splits/neu_seg.json`` (about 10 s)::

    .venv/bin/python -m training.data.make_splits ../shared/data/neu-seg --out benchmarks/splits/neu_seg.json \\
        --eval 800 --calibration 40 --seed 0

The JSON keeps one id a line in the split lists (readable diffs) and one near-duplicate group a line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.data.splits import BLOCK_THRESHOLD, MIN_BLOCKS, build_split_record
from usseg_sdk.atomic import write_text_atomic


def format_json(value: Any, indent: int = 0) -> str:
    """JSON with short lists of scalars on one line and long ones one item a line."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {format_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}" if items else "{}"
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value) and len(value) <= 16:
            return json.dumps(value)
        return "[\n" + ",\n".join(f"{inner}{format_json(v, indent + 1)}" for v in value) + f"\n{pad}]"
    return json.dumps(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data.make_splits",
        description="Make near-duplicate-aware train/calibration/eval splits of an images/ + masks/ dataset.",
    )
    parser.add_argument("root", type=Path, help="dataset folder with images/<id>.* and masks/<id>.png")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--eval", type=int, default=800, help="images held out for evaluation, never trained on")
    parser.add_argument("--calibration", type=int, default=40, help="labelled images inside train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-threshold", type=float, default=BLOCK_THRESHOLD,
                        help="correlation above which two co-located blocks count as the same region")
    parser.add_argument("--min-blocks", type=int, default=MIN_BLOCKS,
                        help="matching blocks (of 16) that make two images near-duplicates")
    args = parser.parse_args(argv)
    record = build_split_record(
        args.root, args.eval, args.calibration, args.seed, args.block_threshold, args.min_blocks
    )
    write_text_atomic(args.out, format_json(record) + "\n")
    nd = record["near_duplicates"]
    print(f"{record['n_images']} images, {nd['pairs']} near-duplicate pairs in {len(nd['groups'])} groups; "
          f"counts {record['counts']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
