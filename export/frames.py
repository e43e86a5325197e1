"""Which frames export uses for int8 calibration and verification: the user's, and it says which.

int8 activation ranges and the verification's numbers are only as good as the frames behind them, and the bundled
NEU-Seg sample is not the user's line. Int8 calibration takes ``--int8-frames DIR``, else the training data folder
recorded in the run's config, else the ``--calibrate`` or ``--verify-frames`` frames; none of them is an
:class:`~export.errors.ExportError` saying what to pass. Verification takes ``--verify-frames DIR``, else the
``--calibrate`` frames, else the int8 frames, else the training folder; only when none exists does it fall back to
the bundled sample, with a warning. The chosen folder, its origin and count are printed and kept in
``verify.json``.

A folder is read like training's ``folder`` dataset: its images, or when it has none at the top level its images
at any depth, mask-named files and mask folders skipped.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from export.errors import ExportError
from training.data.folder import FolderConfig, is_mask_name, list_image_files
from training.data.image_io import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "samples" / "neu-seg"


@dataclass(frozen=True)
class FrameFolder:
    """A folder of frames and where the choice came from (an option, the run's config, the bundled sample)."""

    folder: Path
    origin: str
    masks: Path | None = None

    def describe(self, count: int) -> str:
        return f"{count} frame(s) from {self.folder} ({self.origin})"


def image_files(folder: Path) -> list[Path]:
    """The frames of ``folder`` (see the module docstring), sorted by relative path."""
    if not folder.is_dir():
        raise ExportError(f"image folder {folder} does not exist")
    defaults = FolderConfig(root=str(folder))
    for recursive in (False, True):
        files = list_image_files(folder, IMAGE_EXTENSIONS, recursive, defaults.exclude_dirs)
        files = [p for p in files if not is_mask_name(p, defaults.mask_suffixes)]
        if files:
            return files
    raise ExportError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")


def training_frames(config: Mapping[str, Any] | None) -> Path | None:
    """The training data folder a run's config records (``data.train.root``; its ``images/`` when it has one),
    when it exists on this machine."""
    train = ((config or {}).get("data") or {}).get("train") or {}
    root = train.get("root")
    if not root or not Path(root).is_dir():
        return None
    images = Path(root) / "images"
    return images if images.is_dir() else Path(root)


def int8_frames(*candidates: tuple[Path | None, str]) -> FrameFolder:
    """The first candidate (folder, origin) that is given; ExportError when none is."""
    for folder, origin in candidates:
        if folder is not None:
            return FrameFolder(Path(folder), origin)
    raise ExportError("int8 calibration needs frames from the line: pass --int8-frames DIR (the run's training "
                      "folder is not recorded or not on this machine, and no --calibrate / --verify-frames folder "
                      "was given)")


def verify_frames(*candidates: tuple[Path | None, str, Path | None]) -> FrameFolder:
    """The first candidate (folder, origin, masks) that is given, else the bundled sample with a warning."""
    for folder, origin, masks in candidates:
        if folder is not None:
            return FrameFolder(Path(folder), origin, masks)
    log.warning("no frames of the line to verify on (--verify-frames, --calibrate, --int8-frames or the run's "
                "training folder): verifying on the bundled NEU-Seg sample, which says little about your frames")
    return FrameFolder(SAMPLE_DIR / "images", "the bundled NEU-Seg sample: no frames of the line given",
                       SAMPLE_DIR / "masks")


def largest_size(folder: Path) -> tuple[int, int]:
    """(H, W) holding every frame of ``folder``: the largest height and the largest width."""
    heights, widths = [], []
    for path in image_files(folder):
        frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if frame is not None:
            heights.append(frame.shape[0])
            widths.append(frame.shape[1])
    if not heights:
        raise ExportError(f"no readable image in {folder}")
    return max(heights), max(widths)


class FrameProgress:
    """Progress of a per-frame export step (int8 calibration, verification) on stdout: a tqdm bar on a terminal,
    else training's progress lines (``training.cli_fit.LineProgress``) every ``interval_s``; a closing line always.

    Example:
        >>> progress = FrameProgress("verification", 16)                # doctest: +SKIP
        >>> for frame in frames: check(frame); progress()              # doctest: +SKIP
        >>> progress.close()                                           # doctest: +SKIP
    """

    def __init__(self, label: str, total: int, interval_s: float | None = None, stream: Any = None) -> None:
        from training.cli_fit import PROGRESS_EVERY_S, LineProgress

        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stdout
        self.start = time.monotonic()
        self.bar: Any = None
        self.lines: LineProgress | None = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="frame", file=self.stream, leave=False)
        else:
            self.lines = LineProgress(PROGRESS_EVERY_S if interval_s is None else interval_s, stream=self.stream,
                                      label=label)
            self.lines.begin(total, 0, None)

    def __call__(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.lines is not None:
            self.lines.step({"step": self.done, "images": 1})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        seconds = time.monotonic() - self.start
        print(f"{self.label}: {self.done}/{self.total} frames in {seconds:.1f} s", file=self.stream, flush=True)
