"""``usseg predict SOURCE --model M --out DIR``: segment images, folders, globs, videos or a camera.

Writes ``labels/`` (class-id PNGs), ``overlays/`` (the frame with the classes and a legend), ``predictions.csv``
(Severstal RLE rows of the defect classes) and ``defects.jsonl`` (one line a frame: its connected defect regions).
Frames that cannot be read or predicted are skipped with the reason (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from usseg_sdk.config import add_runtime_arguments, config_from_args
from usseg_sdk.errors import InvalidFrameError, UssegError
from usseg_sdk.rle import write_csv
from usseg_sdk.segmenter import Segmenter
from usseg_sdk.sources import open_source


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


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
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
