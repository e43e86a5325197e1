"""The ``usseg`` command: predict | calibrate | bench | info | doctor.

    usseg predict SOURCE --model M --out DIR     # image, folder, glob, video file or camera index
    usseg calibrate --model M --images DIR --masks DIR --out M2
    usseg bench --model M [--sizes 256x1600] [--batch-sizes 1,4] [--devices cpu,cuda] [--json out.json]
    usseg info M [--json]
    usseg doctor [--json]

One module per command in this package, each with ``add_arguments(parser)`` and ``run(args) -> int``; the work is
done by the library modules (``usseg_sdk.segmenter``, ``.calibrate``, ``.bench``, ``.doctor``), and the runtime
flags and their SegmenterConfig come from ``usseg_sdk.config``. A :class:`~usseg_sdk.errors.UssegError` is printed
without a traceback and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from usseg_sdk import __version__
from usseg_sdk.cli import bench, calibrate, doctor, info, predict
from usseg_sdk.errors import UssegError

COMMANDS = {
    "predict": ("segment images, folders, videos or a camera", predict),
    "calibrate": ("fit the cluster-to-class mapping on labelled frames", calibrate),
    "bench": ("latency and throughput", bench),
    "info": ("show a model's metadata, classes, inputs and outputs", info),
    "doctor": ("check the installation: providers, onnxruntime conflicts, CUDA, TensorRT", doctor),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usseg", description="Run usseg segmentation models.")
    parser.add_argument("--version", action="version", version=f"usseg-sdk {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ...)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, module) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=str(args.log_level).upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except UssegError as e:
        print(f"usseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"usseg {args.command}: interrupted", file=sys.stderr)
        return 130
