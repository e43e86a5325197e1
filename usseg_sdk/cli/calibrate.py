"""``usseg calibrate --model M --images DIR --masks DIR --out M2``: name the clusters from labelled frames
(``--mode``: auto, hungarian, many_to_one, miou), or by hand (``--map 3=scratches,7=scratches``).

The fit and the writing are :mod:`usseg_sdk.calibrate`'s; this parses the flags and prints the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from usseg_sdk.calibrate import CalibrationOptions, calibrate, save
from usseg_sdk.config import add_runtime_arguments, config_from_args
from usseg_sdk.metrics import MAPPING_MODES
from usseg_sdk.segmenter import Segmenter


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help=".onnx, .engine, or export directory")
    p.add_argument("--images", type=Path, help="folder of labelled frames (optional with --map: then scored on them)")
    p.add_argument("--masks", type=Path, help="folder of class-id (or binary 0/255) PNG masks, the frames' stems")
    p.add_argument("--out", "-o", required=True, type=Path, help="new model: a folder, or a path ending in .onnx")
    p.add_argument("--mode", choices=["auto", *MAPPING_MODES], default="auto",
                   help="auto: hungarian when clusters <= classes, else many_to_one; miou: many-to-one for the best "
                        "mIoU of the labelled frames (names defect clusters that majority voting gives to background)")
    p.add_argument("--map", dest="manual_map", metavar="CLUSTER=CLASS,...",
                   help="name the clusters by hand instead of fitting, e.g. 3=scratches,7=scratches (or class ids, "
                        "3=1); clusters not named go to the background class")
    p.add_argument("--class-names", help="comma-separated class names, class 0 first")
    p.add_argument("--labels-file", type=Path, help="class names, one per line (default: labels.txt by the masks)")
    p.add_argument("--background", type=int, default=0, help="class id that is not a defect (-1: none)")
    p.add_argument("--ignore-index", type=int, default=255, help="mask value to ignore (class-id masks)")
    p.add_argument("--mask-threshold", type=int,
                   help="read masks as binary: values >= T are the defect (default: 0/255 and anti-aliased masks are "
                        "detected and binarised at 128, class-id masks read as they are)")
    add_runtime_arguments(p)


def options_from_args(args: argparse.Namespace) -> CalibrationOptions:
    return CalibrationOptions(images=args.images, masks=args.masks, mode=args.mode, class_names=args.class_names,
                              labels_file=args.labels_file, background=None if args.background < 0 else args.background,
                              ignore_index=args.ignore_index, mask_threshold=args.mask_threshold,
                              manual_map=args.manual_map)


def run(args: argparse.Namespace) -> int:
    with Segmenter(args.model, config=config_from_args(args, clusters=True, scores=False)) as seg:
        result = calibrate(seg, options_from_args(args))
        written = save(seg.files, args.out, result)
    print(result.summary())
    for path in written:
        print(f"-> {path}")
    return 0
