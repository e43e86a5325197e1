"""Frame -> model input, driven only by ``ModelMeta.input``: validation, colour order, padding to the stride.

A frame is what a camera or ``cv2.imread`` gives: ``(H, W)`` or ``(H, W, C)`` ``uint8``, colour in BGR order
(``SegmenterConfig.frame_order="rgb"`` for RGB sources). Four-channel frames are colour + infrared (B, G, R, I)
and go only to RGBI models; a BGRA frame for an RGB model is refused rather than guessed at.

Float frames are accepted when every value is finite and in [0, 1] (the range of ``img / 255``); they are
quantised to ``uint8`` with ``rint(x * 255)``, because the exported graph takes ``uint8``. Other dtypes
(``uint16`` from 12-bit line-scan cameras, signed ints, bool) are refused with a message saying how to convert:
guessing their range would give silently wrong output.

The model input is one contiguous ``(B, C, H, W)`` ``uint8`` array (``NHWC``/``float32`` when the meta says so),
filled with one strided copy per channel; bottom/right padding up to a multiple of ``meta.input.stride`` (and at
least ``meta.input.min_size``) is reflect-101 (``cv2.BORDER_REFLECT_101``), and outputs are cropped back.

Example:
    >>> import numpy as np
    >>> from usseg_sdk.meta import InputSpec
    >>> spec = InputSpec(channels=3, color_order="rgb", mean=(0.5,) * 3, std=(0.25,) * 3, stride=4)
    >>> frame = np.zeros((10, 13, 3), np.uint8); frame[..., 2] = 255    # pure red in BGR
    >>> planes = model_planes(validate_frame(frame), spec, "bgr")
    >>> [int(p.max()) for p in planes]                                   # R, G, B
    [255, 0, 0]
    >>> padded_size(10, 13, spec)
    (12, 16)
"""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np

from usseg_sdk.errors import InvalidFrameError
from usseg_sdk.meta import InputSpec

FrameOrder = Literal["bgr", "rgb"]
_MAX_SIDE = 1 << 16  # beyond this a frame is almost surely a mistake (and cv2 refuses it)


def validate_frame(frame: Any) -> np.ndarray:
    """Check a frame and return it as ``(H, W, C)`` uint8 (a view when it already is uint8).

    Raises :class:`InvalidFrameError` naming what was expected and what came.
    """
    if frame is None:
        raise InvalidFrameError("frame is None: expected a (H, W) or (H, W, C) uint8 numpy array "
                                "(did cv2.imread or VideoCapture.read fail?)")
    if not isinstance(frame, np.ndarray):
        raise InvalidFrameError(f"frame must be a numpy array (H, W) or (H, W, C) uint8, got {type(frame).__name__}")
    if frame.ndim not in (2, 3):
        raise InvalidFrameError(f"frame must have 2 dims (H, W) or 3 dims (H, W, C), got shape {frame.shape}")
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        raise InvalidFrameError(f"frame must have 1, 3 or 4 channels in the last axis (H, W, C), got shape "
                                f"{frame.shape}; a (C, H, W) array needs frame.transpose(1, 2, 0)")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InvalidFrameError(f"frame is empty: shape {frame.shape}")
    if max(frame.shape[:2]) > _MAX_SIDE:
        raise InvalidFrameError(f"frame side longer than {_MAX_SIDE} px: shape {frame.shape}")
    frame = _as_uint8(frame)
    return frame[:, :, None] if frame.ndim == 2 else frame


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(frame).all()
            lo, hi = (float(frame.min()), float(frame.max())) if finite else (np.nan, np.nan)
        if not finite:
            raise InvalidFrameError(f"float frame ({frame.dtype}) contains NaN or infinite values")
        if lo < 0.0 or hi > 1.0:
            raise InvalidFrameError(f"float frame ({frame.dtype}) must be in [0, 1], got values in [{lo:g}, {hi:g}]; "
                                    "for 0..255 floats pass frame.astype(np.uint8)")
        return np.rint(frame * 255.0).astype(np.uint8)
    hint = " (12/16-bit camera? scale it, e.g. (frame >> 4).astype(np.uint8) for 12-bit)" \
        if frame.dtype == np.uint16 else ""
    raise InvalidFrameError(f"frame dtype must be uint8 (or float in [0, 1]), got {frame.dtype}{hint}")


def model_planes(frame: np.ndarray, spec: InputSpec, frame_order: FrameOrder = "bgr") -> list[np.ndarray]:
    """The model's input channels, in its order, as 2-D ``(H, W)`` uint8 arrays (views where possible).

    ``frame`` is ``(H, W, C)`` from :func:`validate_frame`. Grey frames feed RGB/BGR models by repetition; colour
    frames feed grey models through ``cv2``'s BT.601 weights (as ``training.nets.input_adapter.to_grey``).
    """
    c = frame.shape[2]
    rgb_index = (2, 1, 0) if frame_order == "bgr" else (0, 1, 2)  # where R, G, B sit in the frame
    order = spec.color_order
    if c == 4 and order != "rgbi":
        raise InvalidFrameError(f"4-channel frames (colour + infrared) are accepted only by RGBI models; this model "
                                f"takes {spec.channels}-channel {order} input. For BGRA pass frame[..., :3]")
    if order == "rgbi":
        if c != 4:
            raise InvalidFrameError(f"this model takes 4-channel RGBI frames ({frame_order.upper()} + infrared), "
                                    f"got {c} channel(s), shape {frame.shape}")
        return [frame[:, :, rgb_index[0]], frame[:, :, 1], frame[:, :, rgb_index[2]], frame[:, :, 3]]
    if order == "gray":
        if c == 1:
            return [frame[:, :, 0]]
        code = cv2.COLOR_BGR2GRAY if frame_order == "bgr" else cv2.COLOR_RGB2GRAY
        return [cv2.cvtColor(np.ascontiguousarray(frame), code)]
    if c == 1:
        return [frame[:, :, 0]] * 3
    r, g, b = (frame[:, :, i] for i in rgb_index)
    return [r, g, b] if order == "rgb" else [b, g, r]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_size(height: int, width: int, spec: InputSpec) -> tuple[int, int]:
    """(H, W) padded up to at least ``min_size`` and to a multiple of ``stride``."""
    return (round_up(max(height, spec.min_size), spec.stride), round_up(max(width, spec.min_size), spec.stride))


def channel_order(frame: np.ndarray, spec: InputSpec, frame_order: FrameOrder = "bgr") -> tuple[int, ...] | None:
    """The frame channel feeding each model channel, when the model takes every frame channel in some order
    (BGR frame -> RGB/BGR model, BGR+I -> RGBI); None otherwise (grey conversion or repetition)."""
    c = frame.shape[2]
    rgb = (2, 1, 0) if frame_order == "bgr" else (0, 1, 2)
    if c == 3 and spec.color_order in ("rgb", "bgr"):
        return rgb if spec.color_order == "rgb" else rgb[::-1]
    if c == 4 and spec.color_order == "rgbi":
        return (*rgb, 3)
    return None


def fill_padded(dst: np.ndarray, planes: list[np.ndarray], frame: np.ndarray | None = None,
                order: tuple[int, ...] | None = None) -> None:
    """Write ``planes`` (each (h, w)) into the top-left of ``dst`` (C, H, W) and reflect-pad the rest.

    With ``frame`` (h, w, C) and ``order`` (from :func:`channel_order`) and no padding, the channels are
    de-interleaved by ``cv2.split`` straight into ``dst`` (about 4x faster than strided numpy copies).
    The padding equals ``cv2.copyMakeBorder(..., cv2.BORDER_REFLECT_101)`` on the bottom/right, repeated as often
    as needed when the pad is longer than the frame (a 1-px-high frame repeats its row).
    """
    h, w = planes[0].shape
    height, width = dst.shape[1:]
    if order is not None and frame is not None and (height, width) == (h, w) and frame.flags.c_contiguous:
        channels: list[np.ndarray] = [dst[0]] * len(order)
        for c, k in enumerate(order):
            channels[k] = dst[c]
        cv2.split(frame, channels)
        return
    for c, plane in enumerate(planes):  # one strided copy per channel, the only copy of the frame
        dst[c, :h, :w] = plane
    if width > w:
        dst[:, :h, w:] = dst[:, :h, reflect_index(w, width)]
    if height > h:
        dst[:, h:, :] = dst[:, reflect_index(h, height), :]


def reflect_index(n: int, total: int) -> np.ndarray:
    """Source indices of positions ``n .. total-1`` of an axis of ``n`` samples reflect-101 padded to ``total``."""
    i = np.arange(n, total)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    m = i % period
    return np.where(m < n, m, period - m)


def to_model_dtype(batch: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(B, C, H, W) uint8 -> what the graph takes (layout and dtype per ``spec``).

    The contract graph takes NCHW uint8 and this returns ``batch`` itself. ``float32`` inputs are scaled to
    [0, 1], and normalised with mean/std when ``normalized_in_graph`` is False.
    """
    out: np.ndarray = batch
    if spec.dtype == "float32":
        out = batch.astype(np.float32) * np.float32(1.0 / 255.0)
        if not spec.normalized_in_graph:
            mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
            out = (out - mean) / std
    if spec.layout == "NHWC":
        out = np.ascontiguousarray(out.transpose(0, 2, 3, 1))
    return out
