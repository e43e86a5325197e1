"""The ``usseg`` command: predict | calibrate | bench | info | doctor.

    usseg predict SOURCE --model M --out DIR     # image, folder, glob, video file or camera index
    usseg calibrate --model M --images DIR --masks DIR --out M2
    usseg bench --model M [--sizes 256x1600] [--batch-sizes 1,4] [--devices cpu,cuda] [--json out.json]
    usseg info M [--json]
    usseg doctor [--json]

Each subcommand lives in a module exposing ``add_arguments(parser)`` and ``run(args) -> int`` (predict and info
here). A :class:`~usseg_sdk.errors.UssegError` is printed without a traceback and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from usseg_sdk import __version__
from usseg_sdk.config import SegmenterConfig, parse_size
from usseg_sdk.errors import InvalidFrameError, UssegError

log = logging.getLogger("usseg_sdk.cli")


# -- shared options ----------------------------------------------------------------------------------------------
def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """Options that build a SegmenterConfig (unset ones come from USSEG_* variables, then defaults)."""
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "tensorrt"], help="default: USSEG_DEVICE or auto")
    p.add_argument("--tile-size", type=parse_size, help="tile H x W, e.g. 256x512 (default: the model's)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default: the model's)")
    p.add_argument("--no-tiling", action="store_true", help="run every frame whole")
    p.add_argument("--batch-size", type=int, help="frames or tiles per backend call (default 8)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")


def config_from_args(args: argparse.Namespace, **fixed: Any) -> SegmenterConfig:
    overrides = {"device": args.device, "tile_size": args.tile_size, "overlap": args.overlap,
                 "batch_size": args.batch_size, "intra_op_threads": args.threads}
    fields = {k: v for k, v in overrides.items() if v is not None}
    if args.no_tiling:
        fields["tiling"] = False
    return SegmenterConfig.from_env(**fields, **fixed)


class Progress:
    """A one-line progress report on stderr (tqdm is not a runtime dependency)."""

    def __init__(self, total: int | None, label: str, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.label, self.count = total, label, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.2 or self.count == self.total):
            self.last = now
            rate = self.count / max(now - self.start, 1e-9)
            of = f"/{self.total}" if self.total else ""
            self.stream.write(f"\r{self.label}: {self.count}{of} frames, {rate:.1f} frames/s")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.count:
            self.stream.write("\n")
            self.stream.flush()


# -- predict -----------------------------------------------------------------------------------------------------
def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="image, folder, glob pattern (quoted), video file, or camera index (0, 1, ...)")
    p.add_argument("--model", "-m", required=True, help=".onnx, .engine, or export directory")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder")
    add_runtime_arguments(p)
    p.add_argument("--min-area", type=int, default=0, help="drop defect regions smaller than this (px)")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay images")
    p.add_argument("--no-labels", action="store_true", help="do not write label PNGs")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (video, camera)")
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")


def run_predict(args: argparse.Namespace) -> int:
    from usseg_sdk.rle import write_csv
    from usseg_sdk.segmenter import Segmenter
    from usseg_sdk.sources import open_source

    seg = Segmenter(args.model, config=config_from_args(args))
    out: Path = args.out
    failures: list[tuple[str, str]] = []
    source = open_source(args.source, channels=seg.meta.input.channels, recursive=args.recursive,
                         on_error=lambda fid, msg: failures.append((fid, msg)))
    for sub in ("labels",) * (not args.no_labels) + ("overlays",) * (not args.no_overlay):
        (out / sub).mkdir(parents=True, exist_ok=True)
    total = min(filter(None, (source.total, args.max_frames)), default=None)
    progress = Progress(total, "usseg predict", enabled=not args.quiet)
    rows: list[tuple[str, int, str]] = []
    n_frames = n_defects = 0
    interrupted = False
    with open(out / "defects.jsonl", "w", encoding="utf-8") as jsonl:
        try:
            for ids, frames in _chunks(source, seg.config.batch_size, args.max_frames):
                for frame_id, res in _predict_chunk(seg, ids, frames, failures):
                    defects = res.defects(min_area=args.min_area)
                    _write_outputs(out, frame_id, res, args)
                    rows.extend(res.to_rle(frame_id))
                    record = {"image_id": frame_id, "height": res.shape[0], "width": res.shape[1],
                              "defects": [d.to_dict() for d in defects]}
                    jsonl.write(json.dumps(record) + "\n")
                    n_frames += 1
                    n_defects += len(defects)
                progress.update(len(ids))
        except KeyboardInterrupt:  # a camera runs until Ctrl-C: keep what was predicted
            interrupted = True
    progress.close()
    write_csv(out / "predictions.csv", rows)
    for frame_id, message in failures:
        print(f"usseg predict: skipped {frame_id}: {message}", file=sys.stderr)
    print(f"{n_frames} frames, {n_defects} defect regions -> {out} (predictions.csv, defects.jsonl"
          f"{', labels/' if not args.no_labels else ''}{', overlays/' if not args.no_overlay else ''})")
    return 130 if interrupted else 1 if failures else 0


def _chunks(source: Iterable[tuple[str, np.ndarray]], size: int,
            limit: int | None) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    ids: list[str] = []
    frames: list[np.ndarray] = []
    for n, (frame_id, frame) in enumerate(source):
        if limit is not None and n >= limit:
            break
        ids.append(frame_id)
        frames.append(frame)
        if len(ids) == size:
            yield ids, frames
            ids, frames = [], []
    if ids:
        yield ids, frames


def _predict_chunk(seg: Any, ids: list[str], frames: list[np.ndarray],
                   failures: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    try:
        return list(zip(ids, seg.predict_batch(frames), strict=True))
    except InvalidFrameError:
        pass  # find the bad frame(s); the others still get predicted
    done = []
    for frame_id, frame in zip(ids, frames, strict=True):
        try:
            done.append((frame_id, seg.predict(frame)))
        except InvalidFrameError as e:
            failures.append((frame_id, str(e)))
    return done


def _write_outputs(out: Path, frame_id: str, res: Any, args: argparse.Namespace) -> None:
    stem = Path(frame_id).stem
    if not args.no_labels:
        _imwrite(out / "labels" / f"{stem}.png", res.labels)
    if not args.no_overlay:
        _imwrite(out / "overlays" / f"{stem}.jpg", res.overlay(legend=True))


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise UssegError(f"cannot write {path}")


# -- info --------------------------------------------------------------------------------------------------------
def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=".onnx, .engine, or export directory")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "tensorrt"])
    p.add_argument("--json", action="store_true", help="print JSON")


def run_info(args: argparse.Namespace) -> int:
    from usseg_sdk.segmenter import Segmenter

    seg = Segmenter(args.model, config=SegmenterConfig.from_env(device=args.device))
    backend = seg.backend
    info = {"model": str(backend.path), "backend": backend.describe(),
            "inputs": [_tensor(t) for t in backend.inputs], "outputs": [_tensor(t) for t in backend.outputs],
            "meta": seg.meta.model_dump(mode="json")}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    meta = seg.meta
    print(f"model      {info['model']}  ({backend.name}, {', '.join(info['backend'].get('providers', []))})")
    print(f"method     {meta.method}  schema v{meta.schema_version}  precision {meta.precision}  "
          f"exporter {meta.exporter or '-'}  opset {meta.opset or '-'}")
    spec = meta.input
    print(f"input      {spec.channels} ch {spec.color_order}  {spec.dtype} {spec.layout}  stride {spec.stride}  "
          f"min {spec.min_size}  native {spec.native_size}  resize {spec.resize_to_native}")
    print(f"tiling     tile {meta.tiling.tile_size}  overlap {meta.tiling.overlap}")
    print(f"clusters   {meta.n_clusters} -> {meta.n_classes} classes  mapping {meta.mapping.kind} "
          f"{meta.cluster_to_class}  (fitted on {meta.mapping.n_images} images)")
    for i, c in enumerate(meta.classes):
        print(f"  class {i:<3} {c.name:<20} rgb{c.color}  {'defect' if c.defect else 'background'}")
    if meta.mapping.metrics:
        print("calibration " + "  ".join(f"{k} {v:.4f}" for k, v in meta.mapping.metrics.items()))
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            print(f"{kind[:-1]:<10} {t['name']:<10} {t['dtype']}  {t['shape']}")
    if meta.training.dataset or meta.training.steps:
        print(f"training   {meta.training.model_dump(exclude={'config'})}")
    return 0


def _tensor(t: Any) -> dict[str, Any]:
    return {"name": t.name, "dtype": None if t.dtype is None else str(t.dtype),
            "shape": None if t.shape is None else ["?" if d is None else d for d in t.shape]}


# -- entry point -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from usseg_sdk import bench, calibrate, doctor

    parser = argparse.ArgumentParser(prog="usseg", description="Run usseg segmentation models.")
    parser.add_argument("--version", action="version", version=f"usseg-sdk {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ...)")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "predict": ("segment images, folders, videos or a camera", add_predict_arguments, run_predict),
        "calibrate": ("fit the cluster-to-class mapping on labelled frames", calibrate.add_arguments,
                      calibrate.run),
        "bench": ("latency and throughput", bench.add_arguments, bench.run),
        "info": ("show a model's metadata, classes, inputs and outputs", add_info_arguments, run_info),
        "doctor": ("check the installation: providers, onnxruntime conflicts, CUDA, TensorRT",
                   doctor.add_arguments, doctor.run),
    }
    for name, (help_text, add, run) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(func=run)
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


if __name__ == "__main__":
    sys.exit(main())
