"""Frame sources for ``usseg predict``: an image, a folder, a glob, a video file or a camera index.

Each source yields ``(frame_id, frame)``. Frame ids are unique within a source: for images the path relative to the
folder (or to the glob's folder; the file name for a single image) in POSIX form, so ``a/f1.jpg`` and ``b/f1.jpg``
stay apart; for video and camera frames ``<file name>#<frame number>`` (``clip.mp4#000123``, ``camera0#000042``).
Unreadable images are reported through ``on_error`` and skipped, so one bad file does not stop a batch job.

Example:
    >>> src = open_source("samples/neu-seg/images")       # doctest: +SKIP
    >>> frame_id, frame = next(iter(src))                 # doctest: +SKIP
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from usseg_sdk.errors import UssegError
from usseg_sdk.image_file import FrameFileError, read_frame_file
from usseg_sdk.masks import in_skipped_folder, is_mask_name

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")


class SourceError(UssegError, ValueError):
    """A predict source that does not exist or cannot be opened."""


@dataclass
class FrameSource:
    """Iterable of ``(frame_id, frame)``; ``total`` is the frame count when known (None for cameras)."""

    kind: str
    paths: list[Path] | None = None
    root: Path | None = None  # image ids are paths relative to this folder
    left_out: list[Path] = field(default_factory=list)  # label maps of the folder or glob, not read as frames
    video: str | int | None = None
    total: int | None = None
    fps: float | None = None  # a video file's frame rate, when it says
    channels: int = 3  # the model's input channels (4: frames are read unchanged, colour + infrared)
    max_value: float | None = None  # 16-bit value that becomes 255 (None: see usseg_sdk.image_file)
    on_error: Callable[[str, str], None] | None = None
    bit_depths: dict[int, str] = field(default_factory=dict)  # max value used for 16-bit frames -> first frame id

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        if self.paths is not None:
            yield from self._images()
        else:
            yield from self._video()

    def _images(self) -> Iterator[tuple[str, np.ndarray]]:
        assert self.paths is not None
        for path in self.paths:
            frame_id = path.relative_to(self.root).as_posix() if self.root is not None else path.name
            try:
                frame, top = read_frame_file(path, channels=self.channels, max_value=self.max_value)
            except FrameFileError as e:
                self._error(frame_id, str(e))
                continue
            if top != 255 and top not in self.bit_depths:
                self.bit_depths[top] = frame_id
                how = "as given" if self.max_value is not None else "from its PNG sBIT chunk or its values"
                log.warning("16-bit frames scaled by %d -> 255 (%d-bit; %s, first %s); --max-value sets the "
                            "scale", top, top.bit_length(), how, frame_id)
            yield frame_id, frame

    def _video(self) -> Iterator[tuple[str, np.ndarray]]:
        cap = cv2.VideoCapture(self.video)
        if not cap.isOpened():
            raise SourceError(f"cannot open video source {self.video!r}")
        name = f"camera{self.video}" if isinstance(self.video, int) else Path(str(self.video)).name
        try:
            index = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield f"{name}#{index:06d}", frame
                index += 1
        finally:
            cap.release()

    def _error(self, frame_id: str, message: str) -> None:
        if self.on_error is not None:
            self.on_error(frame_id, message)
        else:
            log.error(message)


def open_source(source: str, *, channels: int = 3, recursive: bool = False,
                extensions: tuple[str, ...] | None = None, skip_masks: bool = True, max_value: float | None = None,
                on_error: Callable[[str, str], None] | None = None) -> FrameSource:
    """Resolve ``source``: camera index (``"0"``), video file, image file, folder or glob pattern.

    ``channels`` is the model's input channel count: 4-channel models read images unchanged (colour +
    infrared), others as 8-bit BGR (the SDK converts to grey or RGB as the model needs); damaged files are
    skipped through ``on_error`` and 16-bit files scaled by ``max_value`` (:mod:`usseg_sdk.image_file`). A folder
    or glob lists the files whose suffix is one of ``extensions`` (default :data:`IMAGE_SUFFIXES`; any case, dot
    optional), leaving out hidden files and, with ``skip_masks``, label maps (:mod:`usseg_sdk.masks`' rule: a stem
    ending in ``_mask``, ``-gt``, ... or a file inside a ``masks/``, ``labels/``, ... sub-folder): ``left_out``.
    """
    common = {"channels": channels, "max_value": max_value, "on_error": on_error}
    if source.isdigit():
        return FrameSource("camera", video=int(source), **common)
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            cap = cv2.VideoCapture(str(path))
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
            fps = float(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
            cap.release()
            return FrameSource("video", video=str(path), total=total or None, fps=fps or None, **common)
        return FrameSource("images", paths=[path], total=1, **common)
    if path.is_dir():
        root, found = path, path.glob("**/*" if recursive else "*")
    elif any(ch in source for ch in "*?["):
        pattern = os.path.expanduser(source)
        root, found = _glob_root(pattern), (Path(p) for p in glob.glob(pattern, recursive=True))
    else:
        raise SourceError(f"source {source!r} is not a file, folder, glob pattern or camera index")
    suffixes = normalise_extensions(extensions or IMAGE_SUFFIXES)
    files = sorted(p for p in found if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file())
    masks = [p for p in files if is_mask_name(p) or in_skipped_folder(p, root)] if skip_masks else []
    if masks:
        log.info("%s: left out %d label map(s), first %s", source, len(masks), masks[0])
    paths = [p for p in files if p not in set(masks)]
    if not paths:
        raise SourceError(f"source {source!r} holds no images ({', '.join(suffixes)})"
                          + (f" besides {len(masks)} label map(s)" if masks else ""))
    return FrameSource("images", paths=paths, root=root, left_out=masks, total=len(paths), **common)


def normalise_extensions(extensions: tuple[str, ...] | str) -> tuple[str, ...]:
    """``"png,JPG"`` or ``("png", ".jpg")`` -> ``(".png", ".jpg")``."""
    items = extensions.split(",") if isinstance(extensions, str) else extensions
    out = tuple(e if e.startswith(".") else f".{e}" for e in (x.strip().lower() for x in items) if e)
    if not out:
        raise SourceError(f"no file extension in {extensions!r}; expected e.g. png,jpg")
    return out


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern starts in: its leading parts without wildcards (``in/*/f?.png`` -> ``in``)."""
    parts = Path(pattern).parts
    magic = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    return Path(*parts[:magic]) if magic else Path(".")
