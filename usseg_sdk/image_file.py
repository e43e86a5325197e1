"""Reading a frame from an image file: refuse damaged files, and scale 16-bit pixels by their real bit depth.

Damaged files: libjpeg decodes a truncated JPEG into a frame whose missing part is grey (only a warning on stderr)
and such a frame is a wrong prediction that looks fine. A JPEG is complete when an end-of-image marker (FF D9)
follows its last start-of-scan marker (FF DA); a PNG when its chunks run, each whole, up to ``IEND``. Other formats
are trusted to the decoder. A damaged file raises :class:`FrameFileError` naming the file and what is missing.

Bit depth: the runtime takes 8-bit frames. A 16-bit file (PNG, TIFF) is scaled by ``max_value -> 255``, where
``max_value`` is, first found: the caller's (``usseg predict --max-value``); the model's training range
(``ModelMeta.input.max_value``); the PNG's ``sBIT`` chunk (significant bits, written by many camera SDKs); else
inferred from the frame, the smallest of 255, 1023, 4095, 16383 and 65535 (8, 10, 12, 14, 16 bits) not below its
largest value. Reading 16-bit data as 8-bit through OpenCV divides by 256, so a 12-bit frame comes out near black;
the inference is per frame, so give ``--max-value`` when a line's frames are dark enough to fall a bit depth lower.

Example:
    >>> frame, max_value = read_frame_file(Path("frame.png"), channels=3)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from usseg_sdk.errors import UssegError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BIT_DEPTHS = (8, 10, 12, 14, 16)  # what cameras write into 16-bit files, in the order inference tries them


class FrameFileError(UssegError, ValueError):
    """An image file cannot be used as a frame: unreadable, truncated or damaged, or of an unsupported pixel type."""


def read_frame_file(path: Path, *, channels: int = 3, max_value: float | None = None) -> tuple[np.ndarray, int]:
    """A frame (uint8, BGR or grey; BGR+I for ``channels=4``) and the value that was mapped to 255 (255 for 8-bit).

    Raises FrameFileError for a missing, truncated or undecodable file.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile + imdecode: non-ASCII paths work too
    except OSError as e:
        raise FrameFileError(f"cannot read image {path}: {e.strerror or e}") from e
    raw = data.tobytes()
    check_complete(raw, path)
    flags = cv2.IMREAD_UNCHANGED if channels == 4 else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise FrameFileError(f"cannot read image {path} (empty, not an image, or damaged)")
    if image.dtype == np.uint8:
        return image, 255
    if image.dtype != np.uint16:
        raise FrameFileError(f"image {path} has pixel type {image.dtype}; frames are 8-bit or 16-bit")
    top = int(max_value) if max_value is not None else png_significant_max(raw) or inferred_max(image)
    return cv2.convertScaleAbs(image, alpha=255.0 / top), top


def check_complete(data: bytes, path: Path) -> None:
    """FrameFileError when a JPEG or PNG file stops before its end (see the module docstring)."""
    if data[:2] == b"\xff\xd8":
        scan, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
        if scan < 0:
            raise FrameFileError(f"damaged JPEG {path}: no image data (no start-of-scan marker)")
        if end < scan:
            raise FrameFileError(f"truncated JPEG {path}: the file ends inside the image data (no end-of-image "
                                 f"marker after the last scan; {len(data)} bytes)")
    elif data[:8] == PNG_SIGNATURE and _png_chunks(data) is None:
        raise FrameFileError(f"truncated PNG {path}: the file ends before its IEND chunk ({len(data)} bytes)")


def png_significant_max(data: bytes) -> int | None:
    """``2**bits - 1`` from a PNG's ``sBIT`` chunk (the largest over channels), None when it has none."""
    chunks = _png_chunks(data) if data[:8] == PNG_SIGNATURE else None
    bits = max(chunks.get(b"sBIT", b""), default=None) if chunks else None
    return (1 << bits) - 1 if bits else None


def inferred_max(image: np.ndarray) -> int:
    """The smallest full-scale value of :data:`BIT_DEPTHS` that holds the frame's largest value."""
    peak = int(image.max())
    return next((1 << b) - 1 for b in BIT_DEPTHS if peak <= (1 << b) - 1)


def _png_chunks(data: bytes) -> dict[bytes, bytes] | None:
    """The chunks before IEND (type -> data of the first of each type), or None when the file ends first."""
    chunks: dict[bytes, bytes] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length  # length, type, data, CRC
        if end > len(data):
            return None
        if kind == b"IEND":
            return chunks
        chunks.setdefault(kind, data[pos + 8:pos + 8 + length])
        pos = end
    return None
