"""What ``usseg predict`` writes, streamed frame by frame so a run killed at any point keeps every finished frame.

Per frame, in this order: ``labels/<id>.png`` and ``overlays/<id>.jpg`` (each written atomically: a temp file
renamed into place), its overlay to the ``--video-out`` video, its Severstal rows appended to ``predictions.csv``,
one row appended to ``frames.csv`` (size, defect count and area, the pass/fail verdict of :mod:`usseg_sdk.verdict`
and why) and one line to ``defects.jsonl``; every text file is flushed after each frame (and fsync'd at most once a
second and at the end), so after SIGTERM, SIGKILL or a power cut a reader finds complete rows only, one per finished
frame (``defects.jsonl`` is written last: a frame is finished when its line is there). ``summary.json`` (frames
passed, failed and skipped, each skipped frame with its reason, the rule) is replaced atomically at the end.
``predictions.csv`` stays in Severstal's three-column format, which has no row for a frame without defects;
``frames.csv`` has one row for every frame.

Example:
    >>> writer = PredictionWriter(Path("out"))                 # doctest: +SKIP
    >>> for frame_id, result in seg.predict_source("frames/"):  # doctest: +SKIP
    ...     writer.write(frame_id, result)
    >>> writer.close()                                          # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from usseg_sdk.atomic import write_bytes_atomic, write_text_atomic
from usseg_sdk.errors import UssegError
from usseg_sdk.result import Segmentation
from usseg_sdk.rle import CSV_HEADER
from usseg_sdk.verdict import AreaRule, Verdict, decide

FRAMES_HEADER = ("frame_id", "height", "width", "defects", "defect_px", "verdict", "reasons")
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
FSYNC_EVERY_S = 1.0


class OutputError(UssegError, OSError):
    """The output folder cannot be written: it is a file, read-only, or the disk refused a write."""


@dataclass
class RunSummary:
    """Counts of one run, written as ``summary.json``."""

    frames: int = 0
    passed: int = 0
    failed: int = 0
    defects: int = 0
    skipped: int = 0
    skipped_frames: list[dict[str, str]] = field(default_factory=list)
    stopped_by: str | None = None  # the signal that stopped the run early, if one did
    seconds: float = 0.0
    rule: dict[str, Any] = field(default_factory=dict)  # the pass/fail rule (usseg_sdk.verdict.AreaRule)

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "passed": self.passed, "failed": self.failed, "skipped": self.skipped,
                "defects": self.defects, "skipped_frames": self.skipped_frames, "stopped_by": self.stopped_by,
                "seconds": self.seconds, "rule": self.rule}


class PredictionWriter:
    """Streams the outputs of ``usseg predict`` into ``out`` (see the module docstring).

    Raises OutputError when ``out`` is a file or cannot be written.
    """

    def __init__(self, out: Path, *, labels: bool = True, overlays: bool = True, legend: bool = True,
                 rule: AreaRule | None = None, video_out: Path | None = None, fps: float | None = None) -> None:
        self.out = Path(out)
        self.labels, self.overlays, self.legend = labels, overlays, legend
        self.rule = rule or AreaRule()
        self.summary = RunSummary(rule=self.rule.to_dict())
        self.video = VideoOut(Path(video_out), fps or 10.0) if video_out is not None else None
        self._names: dict[str, str] = {}  # output name -> the frame id that has it
        self._start = time.monotonic()
        self._last_sync = self._start
        prepare_output_folder(self.out)
        self._csv_file = self._open("predictions.csv")
        self._frames_file = self._open("frames.csv")
        self._jsonl = self._open("defects.jsonl")
        self._csv = csv.writer(self._csv_file, lineterminator="\n")
        self._frames = csv.writer(self._frames_file, lineterminator="\n")
        self._csv.writerow(CSV_HEADER)
        self._frames.writerow(FRAMES_HEADER)
        self._flush()

    def write(self, frame_id: str, result: Segmentation) -> Verdict:
        """Write every output of one frame and return its verdict; the text files are flushed before this returns.

        Every output is made from ``result`` as given: filter it first (``result.without_small_defects``) so the
        labels, the CSV rows and the regions agree.
        """
        try:
            return self._write(frame_id, result)
        except OSError as e:  # a full disk, a folder removed under a running line
            raise OutputError(f"cannot write the outputs of {frame_id} in {self.out}: {e.strerror or e}") from e

    def _write(self, frame_id: str, result: Segmentation) -> Verdict:
        defects = result.defects()
        verdict, _ = decide(result, self.rule)
        name = self._unique_name(frame_id)
        if self.labels:
            self._image(Path("labels") / f"{name}.png", result.labels)
        if self.overlays:
            self._image(Path("overlays") / f"{name}.jpg", result.overlay(legend=self.legend))
        if self.video is not None:
            self.video.write(result.overlay())
        self._csv.writerows(result.to_rle(frame_id))
        self._frames.writerow((frame_id, result.shape[0], result.shape[1], len(defects),
                               sum(d.area for d in defects), verdict.label, "; ".join(verdict.reasons)))
        record = {"image_id": frame_id, "height": result.shape[0], "width": result.shape[1],
                  "verdict": verdict.label, "reasons": verdict.reasons, "defects": [d.to_dict() for d in defects]}
        self._jsonl.write(json.dumps(record) + "\n")
        self._flush()
        self.summary.frames += 1
        self.summary.passed += verdict.passed
        self.summary.failed += not verdict.passed
        self.summary.defects += len(defects)
        return verdict

    def skip(self, frame_id: str, reason: str) -> None:
        """Count a frame that could not be read or predicted."""
        self.summary.skipped += 1
        self.summary.skipped_frames.append({"frame_id": frame_id, "reason": reason})

    def close(self, stopped_by: str | None = None) -> RunSummary:
        """Flush, fsync and close the streams, and write ``summary.json`` atomically."""
        self.summary.stopped_by = stopped_by
        self.summary.seconds = round(time.monotonic() - self._start, 3)
        if self.video is not None:
            self.video.close()
        for f in (self._csv_file, self._frames_file, self._jsonl):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        try:
            write_text_atomic(self.out / "summary.json", json.dumps(self.summary.to_dict(), indent=2) + "\n")
        except OSError as e:
            raise OutputError(f"cannot write {self.out / 'summary.json'}: {e}") from e
        return self.summary

    def _unique_name(self, frame_id: str) -> str:
        """:func:`output_name`, or with the file type added when another frame took it (``f1.jpg`` + ``f1.png``)."""
        name = output_name(frame_id)
        if self._names.setdefault(name, frame_id) != frame_id:
            name = f"{name}_{Path(frame_id).suffix.lstrip('.')}"
            self._names.setdefault(name, frame_id)
        return name

    def _open(self, name: str) -> TextIO:
        try:
            return open(self.out / name, "w", encoding="utf-8", newline="")
        except OSError as e:
            raise OutputError(f"cannot write {self.out / name}: {e.strerror or e}") from e

    def _flush(self) -> None:
        now = time.monotonic()
        sync = now - self._last_sync >= FSYNC_EVERY_S
        for f in (self._csv_file, self._frames_file, self._jsonl):
            f.flush()
            if sync:
                os.fsync(f.fileno())
        if sync:
            self._last_sync = now

    def _image(self, relative: Path, image: np.ndarray) -> None:
        path = self.out / relative
        ok, data = cv2.imencode(path.suffix, image)
        if not ok:
            raise OutputError(f"cannot encode {path}")
        try:
            write_bytes_atomic(path, data.tobytes(), durable=False)
        except OSError as e:
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from e


class VideoOut:
    """An annotated video (``--video-out``): every frame's overlay, at the source's frame rate. Opened on the
    first frame, whose size it keeps (a frame of another size is resized to it)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        codec = VIDEO_CODECS.get(path.suffix.lower())
        if codec is None:
            raise OutputError(f"--video-out {path}: unknown video type {path.suffix!r}; use one of "
                              f"{', '.join(VIDEO_CODECS)}")
        self._fourcc = cv2.VideoWriter_fourcc(*codec)

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self._size = (image.shape[1], image.shape[0])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.path), self._fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise OutputError(f"cannot write video {self.path} (OpenCV has no writer for it here)")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def output_name(frame_id: str) -> str:
    """The path (relative, without suffix) of a frame's label and overlay files: the frame id's relative path
    mirrored (``a/f1.jpg`` -> ``a/f1``), a video frame in a folder of its video (``clip.mp4#000123`` ->
    ``clip/000123``). Ids that would leave the output folder (absolute, ``..``) keep only their safe parts."""
    video, sep, index = frame_id.rpartition("#")
    path = Path(video).with_suffix("") / index if sep else Path(frame_id).with_suffix("")
    parts = [p for p in path.parts if p not in ("", ".", "..", path.anchor)]
    return "/".join(parts) or "frame"


def prepare_output_folder(out: Path) -> None:
    """Create ``out``; OutputError naming the problem when it is a file or cannot be written."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} is a file; pass --out a folder (it is created when missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {out}: {e.strerror or e}") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {out} is not writable (read-only?); choose another --out")
