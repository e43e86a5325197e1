"""Inspection-line integration: frames in, a pass/fail decision per frame out.

    # watch a folder the camera software writes into (files must appear complete or grow then stop)
    python deploy/line_example.py --model EXPORT_DIR --watch incoming/ --out results/ \
        --max-area inclusion=30 --max-area scratches=50 --max-area patches=400 --min-region 12
    # or read a video file / a camera through OpenCV
    python deploy/line_example.py --model EXPORT_DIR --video line.mp4 --out results/
    python deploy/line_example.py --model EXPORT_DIR --camera 0 --out results/

Threads: the main thread acquires frames into a bounded queue; one worker thread owns the ``Segmenter``
(``seg.clone()`` would give a second worker its own context), predicts, decides, and appends one JSON line per
frame to ``results.jsonl`` (flushed per line, fsync'd every second). Rejected frames get an overlay PNG in
``rejects/``. SIGINT or SIGTERM stops acquisition, lets the worker finish every frame already queued, writes
``summary.json`` and exits 0; a second signal exits at once.

Decision rule (``usseg_sdk.verdict``, the same as ``usseg predict --fail-area``): a frame fails when, for any defect
class, the total area of its regions of at least ``--min-region`` pixels exceeds that class's ``--max-area`` (a bare
number is every class's; default 0: any such region fails the frame).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from usseg_sdk import Segmenter
from usseg_sdk.atomic import write_text_atomic
from usseg_sdk.image_file import FrameFileError, read_frame_file
from usseg_sdk.prediction_writer import output_name
from usseg_sdk.sources import IMAGE_SUFFIXES, open_source
from usseg_sdk.verdict import AreaRule, VerdictRuleError, decide, parse_area_limits

log = logging.getLogger("line")
_STOP = object()


def watch_folder(folder: Path, stop: threading.Event, poll_s: float = 0.2, once: bool = False, channels: int = 3
                 ) -> Iterator[tuple[str, np.ndarray]]:
    """Yield new image files of ``folder`` in arrival order, once each, after their size stopped changing."""
    seen: set[str] = set()
    sizes: dict[str, int] = {}
    while not stop.is_set():
        entries = sorted((e for e in os.scandir(folder) if e.is_file() and e.name not in seen
                          and Path(e.name).suffix.lower() in IMAGE_SUFFIXES), key=lambda e: e.stat().st_mtime)
        for entry in entries:
            size = entry.stat().st_size
            if not once and sizes.get(entry.name) != size:  # still being written: look again next poll
                sizes[entry.name] = size
                continue
            seen.add(entry.name)
            try:  # the SDK's reader: truncated files refused, 16-bit scaled by their bit depth
                frame, _ = read_frame_file(Path(entry.path), channels=channels)
            except FrameFileError as e:
                log.error("%s; skipped", e)
                continue
            yield entry.name, frame
        if once and not any(name not in seen for name in sizes):
            return
        stop.wait(poll_s)


@dataclass
class Worker:
    """Owns the Segmenter; consumes (frame_id, frame, t_acquired) from ``jobs`` until it reads ``_STOP``."""

    seg: Segmenter
    jobs: queue.Queue
    out: Path
    rule: AreaRule
    counts: dict[str, int] = field(default_factory=lambda: {"frames": 0, "passed": 0, "failed": 0, "errors": 0})

    def run(self) -> None:
        (self.out / "rejects").mkdir(parents=True, exist_ok=True)
        last_sync = time.monotonic()
        with open(self.out / "results.jsonl", "a", encoding="utf-8") as jsonl:
            while (job := self.jobs.get()) is not _STOP:
                jsonl.write(json.dumps(self._process(*job)) + "\n")
                jsonl.flush()
                if time.monotonic() - last_sync > 1.0:
                    os.fsync(jsonl.fileno())
                    last_sync = time.monotonic()
            os.fsync(jsonl.fileno())

    def _process(self, frame_id: str, frame: np.ndarray, t_acquired: float) -> dict:
        self.counts["frames"] += 1
        try:
            result = self.seg.predict(frame)
        except Exception as e:  # one bad frame must not stop the line: record it and go on
            self.counts["errors"] += 1
            log.error("frame %s: %s", frame_id, e)
            return {"frame": frame_id, "decision": "error", "error": f"{type(e).__name__}: {e}"}
        decision, regions = decide(result, self.rule)
        self.counts["passed" if decision.passed else "failed"] += 1
        if not decision.passed:
            path = self.out / "rejects" / f"{output_name(frame_id)}.png"  # clip.mp4#000123 -> rejects/clip/000123.png
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), result.overlay())
        return {"frame": frame_id, "decision": "pass" if decision.passed else "fail", "reasons": decision.reasons,
                "areas": decision.areas, "defects": [d.to_dict() for d in regions],
                "latency_ms": round(1000 * (time.monotonic() - t_acquired), 2), "time": time.time()}


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame) -> None:
        if stop.is_set():  # second signal: give up on the queue
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(130)
        log.info("%s: finishing the queued frames, then stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export directory, model.onnx or model.engine")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--watch", type=Path, help="folder to watch for new image files")
    src.add_argument("--video", help="video file")
    src.add_argument("--camera", type=int, help="OpenCV camera index")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-area", action="append", default=[], metavar="CLASS=PX",
                   help="largest total defect area of a class in a passing frame (repeat, or CLASS=PX,CLASS=PX; a "
                        "bare PX for every class)")
    p.add_argument("--min-region", type=int, default=10, help="ignore regions smaller than this (px)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | tensorrt")
    p.add_argument("--queue", type=int, default=8, help="frames buffered between camera and worker")
    p.add_argument("--once", action="store_true", help="--watch: process the files present, then stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    seg = Segmenter(args.model, device=args.device)
    try:
        rule = parse_area_limits(args.max_area, min_region=args.min_region)
        rule.check_classes(seg.class_names)
    except VerdictRuleError as e:
        raise SystemExit(f"--max-area: {e}") from None
    seg.warmup()
    stop = threading.Event()
    install_signal_handlers(stop)
    jobs: queue.Queue = queue.Queue(maxsize=args.queue)
    worker = Worker(seg, jobs, args.out, rule)
    thread = threading.Thread(target=worker.run, name="segmenter", daemon=True)
    thread.start()

    if args.watch is not None:
        frames = watch_folder(args.watch, stop, once=args.once, channels=seg.meta.input.channels)
    else:
        frames = iter(open_source(str(args.camera) if args.camera is not None else args.video))
    t0 = time.monotonic()
    for frame_id, frame in frames:
        jobs.put((frame_id, frame, time.monotonic()))  # blocks on a full queue; an acquired frame is never dropped
        if stop.is_set():
            break
    jobs.put(_STOP)
    thread.join()
    summary = {**worker.counts, "seconds": round(time.monotonic() - t0, 3), "stopped_by_signal": stop.is_set()}
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("done: %s", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
