"""``usseg predict SOURCE --model M --out DIR``: segment images, folders, globs, videos or a camera.

Writes ``labels/`` (class-id PNGs), ``overlays/`` (the frame with the classes and a legend), ``predictions.csv``
(Severstal RLE rows of the defect classes), ``frames.csv`` (one row a frame), ``defects.jsonl`` (one line a frame:
its connected defect regions) and ``summary.json``, streamed frame by frame (:mod:`usseg_sdk.prediction_writer`).
Damaged files (a truncated JPEG or PNG), unreadable ones and frames the model cannot take are skipped with the
reason, counted in the summary, and make the exit status 3. 16-bit files are scaled by their bit depth
(``--max-value``, else :mod:`usseg_sdk.image_file`'s rule). SIGINT or SIGTERM finishes the frame being written,
closes every output and exits 128 + the signal number (130, 143).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from usseg_sdk.config import add_runtime_arguments, config_from_args
from usseg_sdk.prediction_writer import PredictionWriter
from usseg_sdk.segmenter import Segmenter
from usseg_sdk.sources import normalise_extensions, open_source
from usseg_sdk.verdict import parse_area_limits

EXIT_SKIPPED = 3


class Progress:
    """Progress on stderr (tqdm is not a runtime dependency): one line rewritten in place on a terminal; without
    one (a log file, a service) a full line every ``interval_s`` seconds and at the end, never carriage returns."""

    def __init__(self, total: int | None, label: str, stream: TextIO | None = None, enabled: bool = True,
                 interval_s: float = 10.0) -> None:
        self.total, self.label, self.count = total, label, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval_s = 0.2 if self.tty else interval_s
        self.start = self.last = time.perf_counter()
        self.reported = 0

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > self.interval_s or self.count == self.total):
            self.last = now
            self._write(now)

    def _write(self, now: float) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        text = f"{self.label}: {self.count}{of} frames, {rate:.1f} frames/s"
        self.stream.write(f"\r{text}" if self.tty else f"{text}\n")
        self.stream.flush()
        self.reported = self.count

    def close(self) -> None:
        if not (self.enabled and self.count):
            return
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        elif self.reported != self.count:  # stopped early, or a stream of unknown length: the final count
            self._write(time.perf_counter())


EXIT_STATUS = """exit status:
  0    every frame predicted
  2    usage or setup error (model, source, output folder), nothing predicted
  3    some frames were skipped (damaged, unreadable or unusable files; listed in summary.json)
  130  stopped by SIGINT (Ctrl-C), 143 by SIGTERM: outputs hold every frame finished before"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="image, folder, glob pattern (quoted), video file, or camera index (0, 1, ...)")
    p.add_argument("--model", "-m", required=True, help=".onnx, .engine, or export directory")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder")
    add_runtime_arguments(p)
    p.add_argument("--min-area", type=int, default=0,
                   help="defect regions smaller than this (px) become background in every output")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay images")
    p.add_argument("--no-legend", action="store_true", help="overlays without the class legend")
    p.add_argument("--no-labels", action="store_true", help="do not write label PNGs")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (video, camera)")
    p.add_argument("--fail-area", action="append", metavar="CLASS=PX",
                   help="pass/fail rule: a frame fails when a defect class's total area exceeds its limit, e.g. "
                        "--fail-area scratches=50,patches=200, or --fail-area 100 for every class (default 0: any "
                        "defect region of at least --min-area px fails the frame)")
    p.add_argument("--video-out", type=Path, metavar="FILE.mp4",
                   help="also write the overlays as a video (.mp4, .avi, ...), at the source video's frame rate")
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    p.add_argument("--ext", help="file types of a folder or glob to read, e.g. png,jpg (default: every image type)")
    p.add_argument("--include-masks", action="store_true",
                   help="also read files that look like label maps (frame_mask.png, masks/ folders), left out by "
                        "default")
    p.add_argument("--max-value", type=int,
                   help="16-bit frames: the value that means full white, e.g. 4095 for 12-bit data (default: the "
                        "model's training range when recorded, else the PNG's significant bits, else inferred per "
                        "frame from its largest value: 255, 1023, 4095, 16383 or 65535)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.epilog = EXIT_STATUS
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    seg = Segmenter(args.model, config=config_from_args(args))
    rule = parse_area_limits(args.fail_area or [], min_region=0)  # --min-area already removed smaller regions
    rule.check_classes(seg.class_names)
    writer: PredictionWriter | None = None

    def skipped(frame_id: str, reason: str) -> None:
        print(f"usseg predict: skipped {frame_id}: {reason}", file=sys.stderr)
        if writer is not None:
            writer.skip(frame_id, reason)

    source = open_source(args.source, channels=seg.meta.input.channels, recursive=args.recursive,
                         extensions=normalise_extensions(args.ext) if args.ext else None,
                         skip_masks=not args.include_masks, on_error=skipped,
                         max_value=args.max_value or seg.meta.input.max_value)
    if source.left_out:
        print(f"usseg predict: left out {len(source.left_out)} label map(s) (named like frame_mask.png or inside a "
              f"masks/ or labels/ folder; --include-masks reads them), first {source.left_out[0]}", file=sys.stderr)
    writer = PredictionWriter(args.out, labels=not args.no_labels, overlays=not args.no_overlay,
                              legend=not args.no_legend, rule=rule, video_out=args.video_out, fps=source.fps)
    total = min(filter(None, (source.total, args.max_frames)), default=None)
    progress = Progress(total, "usseg predict", enabled=not args.quiet)
    with StopOnSignal() as stop:
        try:
            for frame_id, res in seg.predict_source(source, max_frames=args.max_frames, on_error=skipped):
                writer.write(frame_id, res.without_small_defects(args.min_area))
                progress.update()
                if stop.signal:
                    break
        except KeyboardInterrupt:  # a second signal, or Ctrl-C outside the handler's reach: keep what is written
            stop.signal = stop.signal or signal.SIGINT
        finally:
            progress.close()
            summary = writer.close(stop.signal.name if stop.signal else None)
    outputs = ["predictions.csv", "frames.csv", "defects.jsonl", "summary.json"]
    outputs += ["labels/"] * (not args.no_labels) + ["overlays/"] * (not args.no_overlay)
    print(f"{summary.frames} frames: {summary.passed} pass, {summary.failed} fail, {summary.skipped} skipped; "
          f"{summary.defects} defect regions -> {args.out} ({', '.join(outputs)})"
          + (f"; video {args.video_out}" if args.video_out else ""))
    if stop.signal:
        print(f"usseg predict: stopped by {stop.signal.name} after {summary.frames} frames; every output holds "
              "those frames in full", file=sys.stderr)
        return 128 + int(stop.signal)
    return EXIT_SKIPPED if summary.skipped else 0


class StopOnSignal:
    """SIGINT and SIGTERM (what ``docker stop`` sends) set ``signal``: the frame being written is finished, then the
    run stops. A second signal raises KeyboardInterrupt at once. Handlers are installed only in the main thread
    and restored on exit."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum)
