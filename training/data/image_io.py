"""Reading images and label maps from disk into the arrays every reader hands to the crop/resize step.

Images come back as float32 (H, W, C) in [0, 1], channels in RGB order (or grey, or RGBIR), whatever the file
held: cv2 decodes colour as BGR and this module reorders it. IIC's official loaders passed cv2's BGR arrays on as
if they were RGB (docs/METHODS.md §I7: hue jitter on swapped channels, grey from RGB weights on BGR data);
we do not reproduce that, so a model trained here sees true RGB, as the runtime's ``color_order`` says.

Bit depth: 8-bit files are divided by 255 and 16-bit PNG/TIFF by 65535 (the full range of the type, never the
image's own maximum, so brightness means the same in every image). A camera that stores 12-bit data in 16-bit
files looks dark that way; pass ``max_value=4095`` (values above are clipped to 1).

Grey conversion uses cv2's weights (0.299, 0.587, 0.114) on RGB, computed in float without rounding to 8 bits,
the same weights as ``training.nets.input_adapter.to_grey``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from training.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_DTYPE_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def is_image_file(path: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    """A visible file whose suffix (any case) is one of ``extensions``. Names starting with '.' (macOS
    ``._x.jpg`` resource forks, editor temp files) are never images."""
    return path.suffix.lower() in extensions and not path.name.startswith(".")


def normalise_extensions(extensions: tuple[str, ...]) -> tuple[str, ...]:
    """Lower-case suffixes with their leading dot: ("JPG", ".png") -> (".jpg", ".png")."""
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def can_decode(path: Path) -> bool:
    """Cheap check (cv2 reads the file's signature, not the pixels) that ``path`` is an image cv2 can decode."""
    try:
        return path.is_file() and path.stat().st_size > 0 and cv2.haveImageReader(str(path))
    except (OSError, cv2.error):
        return False


def read_raw(path: Path) -> np.ndarray:
    """The decoded file as cv2 gives it: (H, W) or (H, W, 3|4) in BGR(A) order, uint8 or uint16."""
    # np.fromfile + imdecode instead of imread: works for non-ASCII paths and tells a missing file apart
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read image file {path}: {e}") from e
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(f"cannot decode image file {path} (not an image cv2 can read, or corrupted)")
    if image.dtype not in _DTYPE_MAX:
        raise DataError(f"image file {path} has pixel type {image.dtype}; only 8-bit and 16-bit images are read")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise DataError(f"image file {path} has shape {image.shape}; expected grey, BGR or BGRA")
    return image


def to_unit_float(image: np.ndarray, max_value: float | None = None) -> np.ndarray:
    """uint8/uint16 -> float32 in [0, 1], dividing by the type's maximum (or ``max_value``, then clipping)."""
    scale = _DTYPE_MAX[image.dtype] if max_value is None else float(max_value)
    out = image.astype(np.float32) / np.float32(scale)
    return np.clip(out, 0.0, 1.0, out=out) if max_value is not None else out


def bgr_to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) grey or (H, W, 3|4) BGR(A) float32 -> (H, W, channels): 1 = grey, 3 = RGB. Alpha is dropped."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image.ndim == 2:
        grey = image[:, :, None]  # (H, W, 1)
        return grey if channels == 1 else np.repeat(grey, 3, axis=2)
    return rgb_to_channels(np.ascontiguousarray(image[:, :, 2::-1]), channels)  # BGR(A) -> RGB, alpha dropped


def rgb_to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, 3) RGB float32 -> (H, W, channels): 3 = as is, 1 = grey with cv2's weights."""
    if channels == 3:
        return rgb
    if channels != 1:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]  # float input: exact weights, no 8-bit rounding


def read_image(path: Path, channels: int, max_value: float | None = None) -> np.ndarray:
    """Image file -> float32 (H, W, channels) in [0, 1], RGB order for 3 channels (see the module docstring)."""
    return bgr_to_channels(to_unit_float(read_raw(path), max_value), channels)


def read_label(path: Path) -> np.ndarray:
    """Single-channel 8-bit class-index PNG -> uint8 (H, W). Colour (RGB/palette-as-colour) masks are refused."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read label file {path}: {e}") from e
    label = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if label is None:
        raise DataError(f"cannot decode label file {path} (not an image cv2 can read, or corrupted)")
    if label.ndim == 3:
        raise DataError(
            f"label file {path} has {label.shape[2]} channels; expected a single-channel image of class indices "
            "(a colour or palette mask must first be converted to class indices)"
        )
    if label.dtype != np.uint8:
        raise DataError(f"label file {path} has pixel type {label.dtype}; expected 8-bit class indices")
    return label
