"""``python -m export RUN_DIR_OR_CHECKPOINT``: a trained method -> a deployable model folder for ``usseg_sdk``.

Examples:
    python -m export runs/iic_neu --out models/iic_neu                # model.onnx, fp32, any frame size, verified
    python -m export runs/iic_neu --calibrate line/images line/masks --scores
    python -m export runs/picie --precision int8 --int8-frames line/frames --verify-frames line/frames
    python -m export runs/iic_neu --static-from line/frames           # a static graph sized for the line's frames
    python -m export runs/ac --format onnx engine --precision fp16 \\
        --min-shape 1x256x256 --opt-shape 4x256x1600 --max-shape 8x256x1600

The graph takes any frame size (a multiple of the net's stride: the runtime pads); frames above a pixel budget
(--max-pixels, default 1 MP) are tiled by the runtime with an overlap from the net's measured receptive field.
Verification runs on the user's frames at their own size, as the runtime will run them; it and int8 calibration
print which frames they used (see export/frames.py for the defaults).

Exit status: 0 exported and verified; 1 verification failed (the numbers are printed and written to
``verify.failed.json``); 2 bad input (checkpoint, options, data), with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from export.calibrate import MODES, CalibrationOptions, print_calibration
from export.errors import ExportError, VerificationError
from export.onnx_export import EXPORTERS, OPSET
from export.pipeline import FORMATS, PRECISIONS, EngineOptions, ExportOptions, ExportResult, export_checkpoint
from export.quantize import CALIBRATION_METHODS, Int8Options
from export.tensorrt import FP16_MODES
from export.verify import DEFAULT_THRESHOLDS
from training.checkpoint import describe_checkpoint, find_checkpoint
from training.errors import TrainingError
from usseg_sdk.config import parse_size
from usseg_sdk.errors import UssegError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The export options (the ``add_arguments`` / ``run`` convention of the repository's CLIs)."""
    p.add_argument("source", type=Path, help="run directory (its best checkpoint, else last) or checkpoint directory")
    p.add_argument("--out", "-o", type=Path, help="output folder (default: RUN_DIR/export)")
    p.add_argument("--format", nargs="+", choices=FORMATS, default=["onnx"], help="onnx, and/or a TensorRT engine")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint of a run dir")
    p.add_argument("--head", default="main", help="head to export (main; over = over-clustering head)")
    p.add_argument("--scores", action="store_true", help="add the per-class scores output")
    _add_shape_arguments(p)
    _add_calibration_arguments(p)
    _add_verify_arguments(p)
    _add_int8_arguments(p)
    _add_engine_arguments(p)


def _add_shape_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("graph")
    g.add_argument("--dynamic", action="store_true", help="symbolic batch, height and width (the default)")
    g.add_argument("--static", "--input-size", dest="static", type=_size, metavar="HxW",
                   help="a static graph of this size instead (frames larger than it are tiled)")
    g.add_argument("--static-from", type=Path, metavar="DIR",
                   help="a static graph sized to hold the frames in DIR (their largest height and width)")
    g.add_argument("--max-pixels", type=int,
                   help="pixel budget: the runtime tiles larger frames, and feeds no call more (default 1000000)")
    g.add_argument("--batch-size", type=int, default=1, help="static batch size")
    g.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="auto: torch.onnx dynamo, falling back to TorchScript with the reason logged")
    g.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    g.add_argument("--tile-size", type=_size, help="default tile HxW the runtime cuts large frames into")
    g.add_argument("--tile-overlap", type=int,
                   help="tile overlap in pixels (default: twice the measured receptive-field radius, 32..128)")


def _add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster-to-class calibration")
    g.add_argument("--calibrate", nargs=2, type=Path, metavar=("IMAGES", "MASKS"),
                   help="fit the mapping on labelled frames (masks: class-id PNGs with the images' names)")
    g.add_argument("--mapping", choices=MODES, default="auto",
                   help="auto: hungarian when K <= classes, else many_to_one; miou: many-to-one for the best mIoU; "
                        "hungarian with more clusters than classes: each class its best cluster, the rest background")
    g.add_argument("--map", dest="manual_map", metavar="CLUSTER=CLASS,...",
                   help="name the clusters by hand instead of fitting (e.g. 3=scratches,7=scratches); unnamed "
                        "clusters go to the background class; with --calibrate the frames only score it")
    g.add_argument("--class-names", help="comma-separated class names, class 0 first (default: labels.txt)")
    g.add_argument("--labels-file", type=Path, help="class names, one per line")
    g.add_argument("--background", type=int, default=0, help="class id that is not a defect (-1: none)")
    g.add_argument("--mask-threshold", type=int,
                   help="read the masks as binary: values >= T are the defect (default: 0/255 and anti-aliased masks "
                        "are detected)")


def _add_verify_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("verification (onnxruntime CPU through usseg_sdk.Segmenter)")
    g.add_argument("--no-verify", action="store_true", help="skip verification (not recommended)")
    g.add_argument("--verify-frames", "--verify-images", dest="verify_images", type=Path, metavar="DIR",
                   help="the line's frames, checked at their own size (default: the --calibrate frames, else the "
                        "int8 frames, else the run's training folder; the bundled sample only with a warning)")
    g.add_argument("--verify-masks", type=Path, help="their masks, for the mIoU drop")
    g.add_argument("--verify-count", type=int, default=16, help="frames used")
    g.add_argument("--max-abs-diff", type=float, help="probabilities / scores vs torch (fp32 default 1e-4)")
    g.add_argument("--min-agreement", type=float, help="label agreement with torch (fp32 0.999, fp16 0.99, int8 0.95)")
    g.add_argument("--max-miou-drop", type=float, help="mIoU drop vs torch (fp16 0.01, int8 0.02)")
    g.add_argument("--keep-failed", action="store_true", help="install the artifacts even if verification fails")


def _add_int8_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("int8 (onnxruntime static QDQ quantization)")
    g.add_argument("--int8-frames", "--int8-calibration", dest="int8_calibration", type=Path, metavar="DIR",
                   help="the line's frames for the activation ranges (default: the run's training folder, else the "
                        "--calibrate or --verify-frames frames; never the bundled sample)")
    g.add_argument("--int8-count", type=int, default=32, help="calibration frames used")
    g.add_argument("--int8-float-layers", default="first,last",
                   help="weighted layers kept in float: 'first,last' (default), 'first', 'last' or 'none'")
    g.add_argument("--int8-method", choices=CALIBRATION_METHODS, default="minmax")
    g.add_argument("--int8-per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    g.add_argument("--int8-reduce-range", action="store_true", help="7-bit weights (x86 CPUs without VNNI)")


def _add_engine_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TensorRT engine")
    for name in ("min", "opt", "max"):
        g.add_argument(f"--{name}-shape", help=f"{name} of the optimisation profile (BxHxW or HxW) with --dynamic")
    g.add_argument("--trt-fp16-mode", choices=FP16_MODES, default="auto",
                   help="auto: builder flag on TensorRT 10, float16 graph on 11")
    g.add_argument("--timing-cache", type=Path, help="timing cache file (default ~/.cache/usseg/tensorrt-VER.timing)")
    g.add_argument("--workspace-mb", type=int, help="builder workspace limit")


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    cal = None
    if args.calibrate or args.manual_map:
        images, masks = args.calibrate or (None, None)
        cal = CalibrationOptions(images=images, masks=masks, mode=args.mapping, class_names=args.class_names,
                                 labels_file=args.labels_file,
                                 background=None if args.background < 0 else args.background,
                                 mask_threshold=args.mask_threshold, manual_map=args.manual_map)
    given = {"max_abs_diff": args.max_abs_diff, "min_agreement": args.min_agreement,
             "max_miou_drop": args.max_miou_drop}
    thresholds = replace(DEFAULT_THRESHOLDS[args.precision], **{k: v for k, v in given.items() if v is not None})
    layers = tuple(x.strip() for x in args.int8_float_layers.split(",") if x.strip() and x.strip() != "none")
    return ExportOptions(
        out=args.out or _default_out(args.source), formats=tuple(dict.fromkeys(args.format)),
        precision=args.precision, head=args.head, scores=args.scores,
        dynamic=args.static is None and args.static_from is None, input_size=args.static,
        static_from=args.static_from, batch_size=args.batch_size, exporter=args.exporter, opset=args.opset,
        tile_size=args.tile_size, tile_overlap=args.tile_overlap, max_pixels=args.max_pixels, calibration=cal,
        verify=not args.no_verify, progress=True,
        verify_images=args.verify_images, verify_masks=args.verify_masks, verify_count=args.verify_count,
        thresholds=thresholds, keep_failed=args.keep_failed,
        int8=Int8Options(float_layers=layers, per_channel=not args.int8_per_tensor, method=args.int8_method,
                         reduce_range=args.int8_reduce_range),
        int8_calibration=args.int8_calibration, int8_count=args.int8_count,
        engine=EngineOptions(min_shape=args.min_shape, opt_shape=args.opt_shape, max_shape=args.max_shape,
                             fp16_mode=args.trt_fp16_mode, timing_cache=args.timing_cache,
                             workspace_mb=args.workspace_mb))


def _default_out(source: Path) -> Path:
    """RUN_DIR/export for a run dir or RUN_DIR/checkpoints/NAME; else beside the checkpoint dir."""
    if source.parent.name == "checkpoints":
        return source.parent.parent / "export"
    return source / "export"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Export; 0 done, 1 verification failed (numbers printed), 2 bad input."""
    try:
        print(f"checkpoint: {describe_checkpoint(find_checkpoint(args.source, prefer=args.checkpoint))}")
        result = export_checkpoint(args.source, options_from_args(args), prefer=args.checkpoint)
    except VerificationError as e:
        print(f"verification FAILED: {'; '.join(e.report.get('failures', []))}", file=sys.stderr)
        print(json.dumps(_numbers(e.report), indent=2), file=sys.stderr)
        return 1
    except (ExportError, TrainingError, UssegError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_result(result)
    return 0


def _numbers(report: dict) -> dict:
    keys = ("precision", "frames", "n_images", "frame_sizes", "tiled_frames", "max_abs_diff_probs",
            "max_abs_diff_scores", "label_agreement", "cluster_agreement", "miou_reference", "miou_model", "miou_drop",
            "agreement_note", "thresholds")
    return {k: report.get(k) for k in keys}


def _print_result(result: ExportResult) -> None:
    if result.calibration is not None:
        print_calibration(result.calibration)
    meta = result.meta
    print(f"exported {meta.method} ({meta.n_clusters} clusters -> {meta.n_classes} classes, {meta.precision}, "
          f"opset {meta.opset}, {meta.exporter})")
    details, tiling = result.details, meta.tiling
    shape = "any H x W" if details.get("dynamic") else "x".join(map(str, details.get("example_shape", [])[2:]))
    tiles = f"tile {tiling.tile_size[0]}x{tiling.tile_size[1]}" if tiling.tile_size else \
        f"tiles above {tiling.max_pixels} px"
    print(f"input {shape} (stride {meta.input.stride}); {tiles}, overlap {tiling.overlap}")
    int8 = details.get("int8")
    if int8:
        print(f"int8 calibration: {int8['frames']}")
    if result.verify is not None:
        print("verified: " + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in _numbers(result.verify).items()
                                       if k != "thresholds" and v is not None))
    for path in result.files:
        print(f"-> {path}")


if __name__ == "__main__":
    sys.exit(main())
