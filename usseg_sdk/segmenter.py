"""Segmenter: ``Segmenter(model).predict(frame) -> Segmentation``, the one call a line embeds.

The Segmenter reads the model's :class:`~usseg_sdk.meta.ModelMeta`, opens a backend (onnxruntime or TensorRT,
see :mod:`usseg_sdk.backends`), and turns frames into the graph's input entirely from the metadata: colour order
and channels, padding to the stride (reflect, cropped back), ``min_size``, optional resize to the native size,
and tiling of frames larger than the tile, or above the pixel budget when the model has no tile size (centre-crop
stitching, :mod:`usseg_sdk.tiling`). Labels come from the
graph's ``labels`` output, or from ``clusters`` through ``meta.cluster_to_class`` when the meta says
``outputs.labels = None`` (TensorRT engines recalibrated by ``usseg calibrate``, or a ``model.json`` whose edited
mapping differs from the graph's). Which metadata is used — ``model.json`` or the ONNX file's embedded copy — is
:mod:`usseg_sdk.meta_source`'s rule; ``seg.meta_source`` says which.

Threads: ``predict`` may be called from several threads on one Segmenter. onnxruntime sessions run concurrently;
a TensorRT context runs one inference at a time (the backend locks), so give each thread ``seg.clone()`` — a new
execution context on the same engine — for parallel GPU work. Input buffers are per thread and reused.

Example:
    >>> seg = Segmenter("export_dir/", device="auto")          # doctest: +SKIP
    >>> seg.warmup((256, 1600))                                 # doctest: +SKIP
    >>> result = seg.predict(cv2.imread("frame.png"))          # doctest: +SKIP
    >>> result.labels.shape, [d.class_name for d in result.defects(min_area=20)]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from usseg_sdk.backends import Backend, ModelFiles, find_model_files, open_backend
from usseg_sdk.config import SegmenterConfig, SegmenterConfigError
from usseg_sdk.errors import InvalidFrameError, ModelLoadError
from usseg_sdk.meta import ModelMeta
from usseg_sdk.meta_source import MetaSource, load_meta
from usseg_sdk.preprocess import (
    channel_order,
    fill_padded,
    model_planes,
    padded_size,
    round_up,
    to_model_dtype,
    validate_frame,
)
from usseg_sdk.result import Segmentation
from usseg_sdk.sources import FrameSource, open_source
from usseg_sdk.tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, Tile, budget_tile, plan_tiles

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    """A validated frame, its model channels, and its geometry in model space."""

    frame: np.ndarray
    planes: list[np.ndarray]
    source: np.ndarray  # the validated (h, w, C) uint8 frame the planes are views of
    order: tuple[int, ...] | None  # frame channel per model channel (cv2.split fast path), see channel_order
    size: tuple[int, int]  # (h, w) of the planes
    out_size: tuple[int, int]  # (H, W) of the frame, where results are returned
    padded: tuple[int, int]  # (hp, wp) fed to the net (or tiled)
    tile: tuple[int, int] | None  # tile (th, tw) when the frame is tiled


@dataclass
class _Outputs:
    labels: np.ndarray  # (B, H, W) uint8
    clusters: np.ndarray | None  # (B, H, W) uint8
    scores: np.ndarray | None  # (B, n_classes, H, W) float32


class Segmenter:
    """Run an exported usseg model on frames. See the module docstring.

    Args:
        model: a ``.onnx`` file, a ``.engine``/``.plan`` TensorRT engine, or an export directory.
        device: ``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"tensorrt"``; None takes ``config.device``.
        config: deployment settings; None reads ``USSEG_*`` environment variables (``SegmenterConfig.from_env``).

    Raises:
        ModelLoadError: the model is missing, unreadable, not ONNX/TensorRT, or has no/unusable usseg metadata.
        BackendUnavailableError: the backend or execution provider for ``device`` is not installed/usable.
    """

    def __init__(self, model: str | os.PathLike, device: str | None = None,
                 config: SegmenterConfig | None = None) -> None:
        config = config if config is not None else SegmenterConfig.from_env()
        if device is not None:
            config = config.replace(device=device)
        self.config = config
        self.files: ModelFiles = find_model_files(model)
        self.backend: Backend = open_backend(self.files, config)
        self.meta: ModelMeta
        self.meta_source: MetaSource  # which file the metadata came from (model.json wins over the embedded copy)
        self.meta, self.meta_source = load_meta(self.backend)
        self._setup_io()
        self._local = threading.local()
        log.info("usseg: loaded %s (%s) with %s", self.backend.path, self.meta.method, self.backend.describe())

    # -- set-up ------------------------------------------------------------------------------------------------
    def _setup_io(self) -> None:
        meta, backend = self.meta, self.backend
        if len(backend.inputs) != 1:
            raise ModelLoadError(f"{backend.path}: expected one graph input (image), found "
                                 f"{[t.name for t in backend.inputs]}")
        image = backend.inputs[0]
        self._input_name = image.name
        want = np.dtype(meta.input.dtype)
        if image.dtype is not None and image.dtype != want:
            raise ModelLoadError(f"{backend.path}: input {image.name!r} is {image.dtype}, metadata says {want}")
        shape = image.shape if image.shape is not None else (None,) * 4
        if len(shape) != 4:
            raise ModelLoadError(f"{backend.path}: input {image.name!r} must be 4-D {meta.input.layout}, got {shape}")
        c_axis, h_axis, w_axis = (1, 2, 3) if meta.input.layout == "NCHW" else (3, 1, 2)
        if shape[c_axis] is not None and shape[c_axis] != meta.input.channels:
            raise ModelLoadError(f"{backend.path}: input has {shape[c_axis]} channels, metadata says "
                                 f"{meta.input.channels} ({meta.input.color_order})")
        self._static_batch = shape[0]
        static = (shape[h_axis], shape[w_axis])
        self._static_hw = static if None not in static else None
        limit, low = image.max_shape, image.min_shape
        self._max_hw = (limit[h_axis], limit[w_axis]) if limit is not None else None
        self._max_batch = limit[0] if limit is not None else None
        self._min_hw = (round_up(low[h_axis], meta.input.stride), round_up(low[w_axis], meta.input.stride)) \
            if low is not None else None
        self._setup_outputs()
        self._setup_tiling()

    def _setup_outputs(self) -> None:
        names = {t.name for t in self.backend.outputs}
        wanted = {"clusters": self.meta.outputs.clusters, "labels": self.meta.outputs.labels,
                  "scores": self.meta.outputs.scores}
        missing = [f"{k}={v!r}" for k, v in wanted.items() if v is not None and v not in names]
        if missing:
            raise ModelLoadError(f"{self.backend.path}: graph outputs {sorted(names)} lack {', '.join(missing)} "
                                 "named in the metadata (meta.outputs)")
        self._labels_name = self.meta.outputs.labels
        self._clusters_name = self.meta.outputs.clusters if (self.config.clusters or self._labels_name is None) \
            else None
        self._scores_name = self.meta.outputs.scores if self.config.scores else None
        self._fetch = [n for n in (self._labels_name, self._clusters_name, self._scores_name) if n is not None]
        self._lut = np.zeros(256, np.uint8)
        self._lut[: self.meta.n_clusters] = self.meta.cluster_to_class

    def _setup_tiling(self) -> None:
        spec, cfg = self.meta.input, self.config
        tile = (cfg.tile_size or self.meta.tiling.tile_size) if cfg.tiling else None
        if self._static_hw is not None:
            tile = self._static_hw
        elif self._max_hw is not None:  # a TensorRT profile caps the input size
            cap = tuple((m // spec.stride) * spec.stride for m in self._max_hw)
            tile = cap if tile is None else (min(tile[0], cap[0]), min(tile[1], cap[1]))
        if tile is not None and self._static_hw is None:
            floor = max(2 * spec.stride, spec.min_size)  # a tile holds its reflect padding (< stride)
            low = self._min_hw or (0, 0)
            tile = (round_up(max(tile[0], floor, low[0]), spec.stride),
                    round_up(max(tile[1], floor, low[1]), spec.stride))
        self._tile = tile
        # without a tile size, frames above a pixel budget are tiled (memory bound); see usseg_sdk.tiling
        self._max_pixels = None if not cfg.tiling or tile is not None else \
            (cfg.max_pixels or self.meta.tiling.max_pixels or DEFAULT_MAX_PIXELS)
        stated = self.meta.tiling.tile_size is not None or self.meta.tiling.max_pixels is not None
        self._overlap = cfg.overlap if cfg.overlap is not None else \
            (self.meta.tiling.overlap if stated or tile is not None else round_up(DEFAULT_OVERLAP, spec.stride))
        if tile is not None and min(tile) - self._overlap < spec.stride:
            raise SegmenterConfigError(f"overlap {self._overlap} leaves no room in tile {tile} (stride "
                                       f"{spec.stride}); use a smaller overlap or a larger tile_size")
        if self._max_pixels is not None and self._max_pixels < (2 * self._overlap + 2 * spec.stride) ** 2:
            raise SegmenterConfigError(f"max_pixels {self._max_pixels} cannot hold tiles with overlap "
                                       f"{self._overlap} (stride {spec.stride}); raise max_pixels")
        batch = [cfg.batch_size, self._static_batch, self._max_batch]
        self._chunk = min(b for b in batch if b is not None)

    # -- public API --------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.meta.class_names

    def predict(self, frame: np.ndarray) -> Segmentation:
        """Segment one frame ((H, W) or (H, W, C) uint8, BGR); labels come back at the frame's resolution.

        Raises InvalidFrameError for a frame the model cannot take.
        """
        prepared = self._prepare(frame)
        if prepared.tile is not None:
            return self._run_tiled(prepared)
        return self._run_whole([prepared])[0]

    __call__ = predict

    def predict_batch(self, frames: Iterable[np.ndarray]) -> list[Segmentation]:
        """Segment several frames (any sizes); same-size frames share backend calls of ``config.batch_size``.

        Every frame is validated before any is run, so a bad frame raises without partial work.
        """
        prepared = [self._prepare(f) for f in frames]
        results: list[Segmentation | None] = [None] * len(prepared)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            if p.tile is not None:
                results[i] = self._run_tiled(p)
            else:
                groups.setdefault(p.padded, []).append(i)
        for (hp, wp), idxs in groups.items():
            per_call = self._per_call(hp * wp)
            for start in range(0, len(idxs), per_call):
                chunk = idxs[start:start + per_call]
                for i, res in zip(chunk, self._run_whole([prepared[i] for i in chunk]), strict=True):
                    results[i] = res
        return results  # type: ignore[return-value]

    def predict_source(self, source: str | os.PathLike | int | FrameSource | Iterable[tuple[str, np.ndarray]], *,
                       recursive: bool = False, extensions: tuple[str, ...] | None = None, skip_masks: bool = True,
                       max_value: float | None = None, max_frames: int | None = None,
                       on_error: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, Segmentation]]:
        """Yield ``(frame_id, Segmentation)`` for every frame of a source, streaming (one batch in memory at most).

        ``source``: an image, folder, glob pattern or video file path, a camera index (``0`` or ``"0"``), a
        :class:`~usseg_sdk.sources.FrameSource`, or any iterable of ``(frame_id, frame)``. Paths are opened by
        :func:`~usseg_sdk.sources.open_source` (``recursive``, ``extensions``, ``skip_masks``, ``max_value`` —
        default the model's ``meta.input.max_value`` — go to it); frame ids are unique (``a/f1.jpg``,
        ``clip.mp4#000123``). Files that cannot be read and frames the model cannot take are skipped and reported to
        ``on_error(frame_id, reason)`` (default: a WARNING log line). Image and video frames are predicted in
        batches of ``config.batch_size``; camera frames one at a time, as they come.

        Example:
            >>> for frame_id, result in seg.predict_source("line/frames/", recursive=True):   # doctest: +SKIP
            ...     print(frame_id, len(result.defects(min_area=20)))
        """
        report = on_error or (lambda frame_id, reason: log.warning("skipped %s: %s", frame_id, reason))
        if isinstance(source, (str, os.PathLike, int)):
            source = open_source(str(source), channels=self.meta.input.channels, recursive=recursive,
                                 extensions=extensions, skip_masks=skip_masks, on_error=report,
                                 max_value=max_value if max_value is not None else self.meta.input.max_value)
        size = 1 if isinstance(source, FrameSource) and source.kind == "camera" else self.config.batch_size
        for ids, frames in _chunks(source, size, max_frames):
            yield from self._predict_chunk(ids, frames, report)

    def _predict_chunk(self, ids: list[str], frames: list[np.ndarray],
                       report: Callable[[str, str], None]) -> list[tuple[str, Segmentation]]:
        try:
            return list(zip(ids, self.predict_batch(frames), strict=True))
        except InvalidFrameError:
            pass  # find the bad frame(s); the others still get predicted
        done = []
        for frame_id, frame in zip(ids, frames, strict=True):
            try:
                done.append((frame_id, self.predict(frame)))
            except InvalidFrameError as e:
                report(frame_id, str(e))
        return done

    def warmup(self, shape: tuple[int, int] | None = None, batch_size: int = 1, runs: int = 1) -> None:
        """Run dummy frames so engines are built and memory allocated before the line starts.

        ``shape`` (H, W) should be the line's frame size (TensorRT builds per input shape); default: the model's
        native size, else its tile size, else 256 x 256.
        """
        shape = shape or self.meta.input.native_size or self._tile or (256, 256)
        frame = np.zeros((*shape, self.meta.input.channels), np.uint8)
        for _ in range(runs):
            if batch_size > 1:
                self.predict_batch([frame] * batch_size)
            else:
                self.predict(frame)

    def tile_for(self, frame: np.ndarray) -> tuple[int, int] | None:
        """The tile (H, W) ``predict`` cuts ``frame`` into, or None when it runs the frame whole.

        Example:
            >>> seg.tile_for(np.zeros((3000, 4000), np.uint8))     # doctest: +SKIP
            (1520, 1360)
        """
        return self._prepare(frame).tile

    def preprocess(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """The exact graph input ``predict_batch`` builds for untiled frames of one padded size (a new array).

        For benchmarking the backend alone and for debugging preprocessing; tiled frames raise ValueError.
        """
        prepared = [self._prepare(f) for f in frames]
        if any(p.tile is not None or p.padded != prepared[0].padded for p in prepared):
            raise ValueError("preprocess() takes untiled frames of one size; these are tiled or differ in size")
        batch = np.empty((self._batch_size(len(prepared)), self.meta.input.channels, *prepared[0].padded), np.uint8)
        for i, p in enumerate(prepared):
            fill_padded(batch[i], p.planes, p.source, p.order)
        batch[len(prepared):] = 0
        return to_model_dtype(batch, self.meta.input)

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def output_names(self) -> list[str]:
        """The graph outputs each backend call fetches."""
        return list(self._fetch)

    def clone(self) -> Segmenter:
        """A Segmenter for another thread: same metadata and weights, the backend's own per-thread copy.

        onnxruntime sessions are shared (thread-safe); TensorRT gets a new execution context and stream.
        """
        twin = copy.copy(self)
        twin.backend = self.backend.clone()
        twin._local = threading.local()
        return twin

    def info(self) -> dict[str, Any]:
        """Model, backend and runtime settings, for logs and ``usseg info``."""
        return {"model": str(self.backend.path), "backend": self.backend.describe(),
                "input": self._input_name, "outputs": self._fetch, "tile_size": self._tile,
                "max_pixels": self._max_pixels, "overlap": self._overlap, "batch_size": self._chunk,
                "meta_source": self.meta_source.to_dict(),
                "meta": self.meta.model_dump(mode="json")}

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Segmenter({str(self.backend.path)!r}, backend={self.backend.name!r}, method={self.meta.method!r}, "
                f"classes={self.meta.class_names})")

    # -- pipeline ----------------------------------------------------------------------------------------------
    def _prepare(self, frame: np.ndarray) -> _Prepared:
        original = frame
        frame = validate_frame(frame)
        out_size = (frame.shape[0], frame.shape[1])
        spec = self.meta.input
        if spec.resize_to_native and spec.native_size is not None and out_size != tuple(spec.native_size):
            nh, nw = spec.native_size
            shrink = nh * nw < out_size[0] * out_size[1]
            resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            frame = resized.reshape(nh, nw, frame.shape[2])
        planes = model_planes(frame, spec, self.config.frame_order)
        h, w = planes[0].shape
        hp, wp = padded_size(h, w, spec)
        least = self._static_hw or self._min_hw  # a fixed input size, or a TensorRT profile's minimum
        if least is not None:
            hp, wp = max(hp, least[0]), max(wp, least[1])
        tile = None
        if self._tile is not None and (hp > self._tile[0] or wp > self._tile[1]):
            tile = (min(self._tile[0], hp), min(self._tile[1], wp))
        elif self._max_pixels is not None:
            floor = max(2 * spec.stride, spec.min_size)
            tile = budget_tile((hp, wp), self._max_pixels, self._overlap, spec.stride, floor)
        order = channel_order(frame, spec, self.config.frame_order)
        return _Prepared(original, planes, frame, order, (h, w), out_size, (hp, wp), tile)

    def _buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A per-thread reusable uint8 array (the backend has returned before it is refilled)."""
        pool: dict[tuple[int, ...], np.ndarray] = self._local.__dict__.setdefault("pool", {})
        buf = pool.get(shape)
        if buf is None:
            if len(pool) >= 4:
                pool.clear()
            buf = pool[shape] = np.empty(shape, np.uint8)
        return buf

    def _per_call(self, pixels: int) -> int:
        """Frames or tiles of ``pixels`` each in one backend call: the batch size, cut to the pixel budget."""
        if self._max_pixels is None or self._static_batch is not None:
            return self._chunk
        return max(1, min(self._chunk, self._max_pixels // pixels))

    def _batch_size(self, n: int) -> int:
        return self._static_batch if self._static_batch is not None else n

    def _run_whole(self, prepared: Sequence[_Prepared]) -> list[Segmentation]:
        hp, wp = prepared[0].padded
        batch = self._buffer((self._batch_size(len(prepared)), self.meta.input.channels, hp, wp))
        for i, p in enumerate(prepared):
            fill_padded(batch[i], p.planes, p.source, p.order)
        batch[len(prepared):] = 0  # static-batch padding slots
        out = self._infer(batch)
        return [self._result(p, out.labels[i], None if out.clusters is None else out.clusters[i],
                             None if out.scores is None else out.scores[i])
                for i, p in enumerate(prepared)]

    def _run_tiled(self, p: _Prepared) -> Segmentation:
        assert p.tile is not None
        c, (h, w), (th, tw) = self.meta.input.channels, p.size, p.tile
        full = self._buffer((c, *p.padded))
        fill_padded(full, p.planes, p.source, p.order)
        tiles = plan_tiles(p.padded, p.tile, self._overlap, self.meta.input.stride)
        labels = np.empty((h, w), np.uint8)
        clusters = np.empty((h, w), np.uint8) if self._clusters_name else None
        scores = None
        per_call = self._per_call(th * tw)
        for start in range(0, len(tiles), per_call):
            chunk = tiles[start:start + per_call]
            batch = self._buffer((self._batch_size(len(chunk)), c, th, tw))
            for j, t in enumerate(chunk):
                batch[j] = full[:, t.y0:t.y0 + th, t.x0:t.x0 + tw]
            batch[len(chunk):] = 0
            out = self._infer(batch)
            if out.scores is not None and scores is None:
                scores = np.empty((out.scores.shape[1], h, w), np.float32)
            for j, t in enumerate(chunk):
                _stitch(t, (h, w), labels, out.labels[j])
                if clusters is not None and out.clusters is not None:
                    _stitch(t, (h, w), clusters, out.clusters[j])
                if scores is not None and out.scores is not None:
                    _stitch(t, (h, w), scores, out.scores[j])
        return self._result(p, labels, clusters, scores, cropped=True)

    def _infer(self, batch: np.ndarray) -> _Outputs:
        """(B, C, H, W) uint8 -> labels/clusters (B, H, W) uint8 and scores (B, K, H, W) float32."""
        out = self.backend.run({self._input_name: to_model_dtype(batch, self.meta.input)}, self._fetch)
        expect = (batch.shape[0], batch.shape[2], batch.shape[3])
        clusters = _label_map(out, self._clusters_name, expect, self.backend.path)
        labels = (_label_map(out, self._labels_name, expect, self.backend.path) if self._labels_name
                  else np.take(self._lut, clusters))
        scores = None
        if self._scores_name is not None:
            scores = out[self._scores_name]
            if scores.ndim != 4 or (scores.shape[0], *scores.shape[2:]) != expect:
                raise ModelLoadError(f"{self.backend.path}: output {self._scores_name!r} has shape {scores.shape}, "
                                     f"expected (B, n_classes, H, W) with (B, H, W) = {expect}")
            scores = scores.astype(np.float32, copy=False)
        return _Outputs(labels, clusters if self._clusters_name else None, scores)

    def _result(self, p: _Prepared, labels: np.ndarray, clusters: np.ndarray | None, scores: np.ndarray | None,
                cropped: bool = False) -> Segmentation:
        h, w = p.size
        if not cropped:
            labels = _crop(labels, h, w)
            clusters = None if clusters is None else _crop(clusters, h, w)
            scores = None if scores is None else _crop(scores, h, w)
        if p.out_size != p.size:  # resize_to_native: back to the frame's resolution
            oh, ow = p.out_size
            labels = cv2.resize(labels, (ow, oh), interpolation=cv2.INTER_NEAREST)
            clusters = None if clusters is None else cv2.resize(clusters, (ow, oh), interpolation=cv2.INTER_NEAREST)
            if scores is not None:
                scores = np.stack([cv2.resize(s, (ow, oh), interpolation=cv2.INTER_LINEAR) for s in scores])
        return Segmentation(labels=self._outside_roi_to_background(labels), meta=self.meta, clusters=clusters,
                            scores=scores, frame=p.frame)

    def _outside_roi_to_background(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` with the ignored border and everything outside ``config.roi`` set to the background class."""
        border = self.config.ignore_border if self.config.ignore_border is not None else self.meta.ignore_border
        roi = self.config.roi
        if not border and roi is None:
            return labels
        h, w = labels.shape
        x0, y0, x1, y1 = border, border, w - border, h - border
        if roi is not None:
            x0, y0, x1, y1 = max(x0, roi[0]), max(y0, roi[1]), min(x1, roi[0] + roi[2]), min(y1, roi[1] + roi[3])
        kept = labels[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)].copy()  # labels may be the backend's buffer
        out = np.full_like(labels, self.meta.background_id)
        out[max(y0, 0):max(y0, 0) + kept.shape[0], max(x0, 0):max(x0, 0) + kept.shape[1]] = kept
        return out


def _chunks(source: Iterable[tuple[str, np.ndarray]], size: int,
            limit: int | None) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """Lists of up to ``size`` (ids, frames) from ``source``, stopping after ``limit`` frames."""
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


def _crop(array: np.ndarray, h: int, w: int) -> np.ndarray:
    """Crop the padding off a (..., H, W) map; contiguous, a view when nothing was padded."""
    if array.shape[-2:] == (h, w):
        return array
    return np.ascontiguousarray(array[..., :h, :w])


def _stitch(t: Tile, size: tuple[int, int], dst: np.ndarray, src: np.ndarray) -> None:
    """Copy the kept part of one tile's output (..., th, tw) into the frame-sized ``dst`` (..., h, w)."""
    y1, x1 = min(t.keep_y1, size[0]), min(t.keep_x1, size[1])
    if t.keep_y0 >= y1 or t.keep_x0 >= x1:
        return  # the tile keeps only padding
    dst[..., t.keep_y0:y1, t.keep_x0:x1] = src[..., t.keep_y0 - t.y0:y1 - t.y0, t.keep_x0 - t.x0:x1 - t.x0]


def _label_map(out: dict[str, np.ndarray], name: str | None, expect: tuple[int, int, int],
               path: Path) -> np.ndarray | None:
    """A (B, H, W) integer output as uint8 (the contract's dtype; int64 ArgMax outputs are converted)."""
    if name is None:
        return None
    array = out[name]
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != expect:
        raise ModelLoadError(f"{path}: output {name!r} has shape {array.shape}, expected (B, H, W) = {expect}")
    return array if array.dtype == np.uint8 else array.astype(np.uint8)
