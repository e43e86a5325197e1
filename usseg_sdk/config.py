"""SegmenterConfig: how a :class:`~usseg_sdk.segmenter.Segmenter` runs a model (device, tiling, batching, threads).

Everything about *what* the model needs (channels, stride, classes) lives in :class:`~usseg_sdk.meta.ModelMeta`;
this holds the deployment choices a line engineer makes. Every field can also come from an environment
variable ``USSEG_<FIELD>`` (``SegmenterConfig.from_env()``), so a line can be retuned without a code change.
Every ``usseg`` command that runs a model takes the same runtime flags (:func:`add_runtime_arguments`) and builds
its config with :func:`config_from_args`: flag, else environment variable, else default.
pydantic-settings is not a dependency: the variables are parsed here, and a bad value is a
:class:`SegmenterConfigError` naming the variable, what it expects and what it got.

Example:
    >>> cfg = SegmenterConfig.from_env({"USSEG_DEVICE": "cpu", "USSEG_TILE_SIZE": "256x512", "USSEG_SCORES": "0"})
    >>> cfg.device, cfg.tile_size, cfg.scores
    ('cpu', (256, 512), False)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from usseg_sdk.errors import UssegError

Device = Literal["auto", "cpu", "cuda", "tensorrt"]
ENV_PREFIX = "USSEG_"


class SegmenterConfigError(UssegError, ValueError):
    """A SegmenterConfig field or a ``USSEG_*`` environment variable has an unusable value."""


class SegmenterConfig(BaseModel):
    """Deployment settings of a Segmenter. All fields have defaults; see the module docstring for env vars.

    Region of interest: ``ignore_border`` (else the model's ``meta.ignore_border``) pixels along each edge, and
    everything outside ``roi`` (x, y, w, h), are set to the background class in ``labels`` (so in defects, RLE rows
    and overlays); ``clusters`` and ``scores`` stay as the net gave them.

    Tiling: frames larger than the tile (``tile_size``, else the model's ``meta.tiling.tile_size``) are cut into
    overlapping tiles; without a tile size, frames above ``max_pixels`` (else ``meta.tiling.max_pixels``, else
    ``usseg_sdk.tiling.DEFAULT_MAX_PIXELS``) are, so memory stays bounded; ``tiling=False`` runs every frame
    whole. ``overlap`` (else ``meta.tiling.overlap``) should be at least twice the net's receptive-field radius for
    the tiled result to equal the untiled one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Device = "auto"
    backend: str | None = Field(
        default=None, description="a registered backend by name (usseg_sdk.backends); None: chosen for the device")
    providers: tuple[str, ...] | None = Field(
        default=None, description="explicit onnxruntime execution providers, in priority order (overrides device)")
    device_id: int = Field(default=0, ge=0)
    tiling: bool = True
    tile_size: tuple[int, int] | None = Field(default=None, description="(H, W); None: the model's default")
    overlap: int | None = Field(default=None, ge=0, description="pixels shared by neighbouring tiles")
    max_pixels: int | None = Field(
        default=None, ge=1, description="tile frames above this many pixels, and feed no backend call more (memory "
                                        "bound); None: the model's meta.tiling.max_pixels, else 1 MP")
    batch_size: int = Field(default=8, ge=1, description="frames or tiles per backend call")
    scores: bool = Field(default=True, description="return class scores when the model has a scores output")
    clusters: bool = Field(default=True, description="return the raw cluster map beside the labels")
    frame_order: Literal["bgr", "rgb"] = Field(default="bgr", description="channel order of 3/4-channel frames")
    intra_op_threads: int | None = Field(default=None, ge=0, description="onnxruntime intra-op threads (0: auto)")
    inter_op_threads: int | None = Field(default=None, ge=0)
    trt_fp16: bool = Field(default=False, description="let onnxruntime's TensorRT provider build fp16 kernels")
    trt_cache_dir: Path | None = Field(default=None, description="TensorRT engine cache (onnxruntime TRT EP)")
    trt_workspace_mb: int | None = Field(default=None, ge=1)
    ignore_border: int | None = Field(default=None, ge=0, description=(
        "pixels along each frame edge predicted as background; None: the model's meta.ignore_border"))
    roi: tuple[int, int, int, int] | None = Field(default=None, description=(
        "region of interest (x, y, w, h) in frame pixels; predictions outside it are background"))

    @field_validator("tile_size")
    @classmethod
    def _positive_tile(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and min(v) <= 0:
            raise ValueError(f"tile_size must be positive, got {v}")
        return v

    @field_validator("roi")
    @classmethod
    def _roi_size(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None and (min(v[:2]) < 0 or min(v[2:]) <= 0):
            raise ValueError(f"roi must be (x, y, w, h) with x, y >= 0 and w, h > 0, got {v}")
        return v

    @field_validator("providers")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and not v:
            raise ValueError("providers must name at least one execution provider (or be None)")
        return v

    @classmethod
    def create(cls, **fields: Any) -> SegmenterConfig:
        """Like the constructor, but a bad value is a :class:`SegmenterConfigError` naming the field."""
        try:
            return cls(**fields)
        except ValidationError as e:
            raise SegmenterConfigError(_describe(e, "SegmenterConfig")) from e

    def replace(self, **fields: Any) -> SegmenterConfig:
        """A copy with ``fields`` changed (validated)."""
        return type(self).create(**{**self.model_dump(), **fields})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> SegmenterConfig:
        """Read ``USSEG_<FIELD>`` variables (``os.environ`` by default); keyword ``overrides`` win over them.

        Unknown ``USSEG_*`` variables are ignored (other parts of usseg use the prefix too, e.g. USSEG_DATA).
        """
        environ = os.environ if environ is None else environ
        fields: dict[str, Any] = {}
        for name, parse in _ENV_PARSERS.items():
            var = ENV_PREFIX + name.upper()
            raw = environ.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                fields[name] = parse(raw.strip())
            except ValueError as e:
                raise SegmenterConfigError(f"environment variable {var}={raw!r}: {e}") from e
        fields.update(overrides)
        try:
            return cls(**fields)
        except ValidationError as e:
            raise SegmenterConfigError(_describe(e, "SegmenterConfig from USSEG_* environment variables")) from e


def add_runtime_arguments(p: argparse.ArgumentParser, *, device: bool = True, batch_size: bool = True) -> None:
    """The flags that build a SegmenterConfig; unset ones come from ``USSEG_*`` variables, then defaults.

    ``device`` / ``batch_size`` False leave those out for a command that sweeps them itself (``usseg bench``).
    """
    if device:
        p.add_argument("--device", choices=["auto", "cpu", "cuda", "tensorrt"], help="default: USSEG_DEVICE or auto")
        p.add_argument("--backend", help="a registered backend by name, e.g. onnxruntime (default: USSEG_BACKEND, "
                                         "else the best for the device)")
    p.add_argument("--tile-size", type=_size_argument, help="tile H x W, e.g. 256x512 (default: the model's)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default: the model's)")
    p.add_argument("--max-pixels", type=int, help="tile frames above this many pixels (default: the model's, else "
                                                  "1000000)")
    p.add_argument("--no-tiling", action="store_true", help="run every frame whole")
    if batch_size:
        p.add_argument("--batch-size", type=int, help="frames or tiles per backend call (default 8)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    p.add_argument("--ignore-border", type=int, metavar="PX",
                   help="pixels along each frame edge predicted as background (default: the model's, usually 0)")
    p.add_argument("--roi", type=_roi_argument, metavar="X,Y,W,H",
                   help="region of interest in frame pixels; predictions outside it are background")


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
                     **fixed: Any) -> SegmenterConfig:
    """The SegmenterConfig of :func:`add_runtime_arguments`' flags in ``args``; ``fixed`` fields win over both."""
    flags = {"device": "device", "backend": "backend", "tile_size": "tile_size", "overlap": "overlap",
             "max_pixels": "max_pixels", "batch_size": "batch_size", "intra_op_threads": "threads",
             "ignore_border": "ignore_border", "roi": "roi"}
    fields = {field: getattr(args, flag, None) for field, flag in flags.items()}
    fields = {k: v for k, v in fields.items() if v is not None}
    if getattr(args, "no_tiling", False):
        fields["tiling"] = False
    return SegmenterConfig.from_env(environ, **{**fields, **fixed})


def _size_argument(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_bool(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def parse_size(raw: str) -> tuple[int, int]:
    """``"512"`` -> (512, 512); ``"256x1600"``, ``"256,1600"`` -> (256, 1600) as (H, W)."""
    parts = raw.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError("expected a size like 512 or 256x1600 (H x W)") from None
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return (values[0], values[1])
    raise ValueError("expected a size like 512 or 256x1600 (H x W)")


def parse_roi(raw: str) -> tuple[int, int, int, int]:
    """``"10,20,300,200"`` -> (x, y, w, h)."""
    try:
        values = tuple(int(v) for v in raw.replace("x", ",").split(","))
    except ValueError:
        raise ValueError("expected a region X,Y,W,H in pixels, e.g. 10,20,300,200") from None
    if len(values) != 4:
        raise ValueError("expected a region X,Y,W,H in pixels, e.g. 10,20,300,200")
    return values  # type: ignore[return-value]


def _roi_argument(text: str) -> tuple[int, int, int, int]:
    try:
        return parse_roi(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None


def _parse_providers(raw: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in raw.split(",") if p.strip())
    if not names:
        raise ValueError("expected comma-separated provider names, e.g. CUDAExecutionProvider,CPUExecutionProvider")
    return names


_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "device": str.lower,
    "backend": str,
    "providers": _parse_providers,
    "device_id": _parse_int,
    "tiling": parse_bool,
    "tile_size": parse_size,
    "overlap": _parse_int,
    "max_pixels": _parse_int,
    "batch_size": _parse_int,
    "scores": parse_bool,
    "clusters": parse_bool,
    "frame_order": str.lower,
    "intra_op_threads": _parse_int,
    "inter_op_threads": _parse_int,
    "trt_fp16": parse_bool,
    "trt_cache_dir": Path,
    "trt_workspace_mb": _parse_int,
    "ignore_border": _parse_int,
    "roi": parse_roi,
}
ENV_VARS = tuple(ENV_PREFIX + name.upper() for name in _ENV_PARSERS)


def _describe(e: ValidationError, origin: str) -> str:
    problems = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        env = f"; env {ENV_PREFIX}{str(err['loc'][0]).upper()}" if err["loc"] else ""
        problems.append(f"{field}: {err['msg']} (got {err.get('input')!r}{env})")
    return f"{origin} is invalid: " + "; ".join(problems)
