"""ModelMeta: the one contract between ``export`` (which writes it) and the runtime (which reads it).

Everything the runtime needs to turn a camera frame into the model's input and the model's output into a
class map lives here, never in call sites: channels and colour order, the stride the net needs for padding,
tiling defaults, the cluster-to-class mapping, class names and colours. It travels inside the ONNX file
(``metadata_props["usseg.meta"]``) and beside every model as ``model.json`` / ``model.engine.json``.

Schema versions are integers. A runtime reads every version up to :data:`SCHEMA_VERSION` and refuses a newer
one with a :class:`~usseg_sdk.errors.ModelMetaError` that says to upgrade; a malformed field is the same error
naming the field.

Example:
    >>> meta = ModelMeta.uncalibrated(method="iic", n_clusters=3, input=InputSpec(
    ...     channels=1, color_order="gray", mean=(0.5,), std=(0.25,), stride=2, native_size=(128, 128)))
    >>> ModelMeta.from_json(meta.to_json()) == meta
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from usseg_sdk.atomic import write_text_atomic
from usseg_sdk.errors import ModelMetaError

SCHEMA_VERSION = 1
METADATA_KEY = "usseg.meta"

# Names of the graph tensors export creates and `usseg calibrate` rewrites (see docs/ARCHITECTURE.md).
MAPPING_INITIALIZER = "usseg_cluster_to_class"  # int64 (n_clusters,)
SCORES_INITIALIZER = "usseg_class_from_cluster"  # float32 (n_classes, n_clusters), one-hot columns

_CHANNELS_OF = {"gray": 1, "rgb": 3, "bgr": 3, "rgbi": 4}

RGB = tuple[int, int, int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassInfo(_Strict):
    """One output class: its name, its overlay colour (RGB) and whether it counts as a defect."""

    name: str = Field(min_length=1)
    color: RGB
    defect: bool = True

    @field_validator("color")
    @classmethod
    def _color_in_range(cls, v: RGB) -> RGB:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError(f"colour components must be 0..255, got {v}")
        return v


class InputSpec(_Strict):
    """What the graph takes and how a frame becomes that.

    ``mean``/``std`` are per channel in [0, 1] units; with ``normalized_in_graph`` (the default for exports)
    they are informative only and the graph takes raw ``uint8``. H and W of the graph input must be multiples
    of ``stride``; the runtime pads (reflect) and crops back.
    """

    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["uint8", "float32"] = "uint8"
    channels: Literal[1, 3, 4]
    color_order: Literal["gray", "rgb", "bgr", "rgbi"]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalized_in_graph: bool = True
    sobel: bool = False
    stride: int = Field(default=1, ge=1)
    min_size: int = Field(default=1, ge=1)
    native_size: tuple[int, int] | None = None
    resize_to_native: bool = False
    max_value: int | None = Field(default=None, ge=1, le=65535, description=(
        "16-bit frames: the pixel value training mapped to 1.0 (e.g. 4095 for 12-bit data); None: not recorded, "
        "the runtime reads the file's significant bits or infers them (usseg_sdk.image_file)"))

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if _CHANNELS_OF[self.color_order] != self.channels:
            raise ValueError(f"color_order {self.color_order!r} has {_CHANNELS_OF[self.color_order]} channels, "
                             f"channels says {self.channels}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.channels:
                raise ValueError(f"{name} needs {self.channels} values (one per channel), got {getattr(self, name)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.resize_to_native and self.native_size is None:
            raise ValueError("resize_to_native needs native_size")
        return self


class OutputSpec(_Strict):
    """Names of the graph outputs.

    ``clusters`` (B, H, W) integer argmax over the net's clusters is always there. ``labels`` (B, H, W) is the
    same mapped to classes inside the graph; when it is None the runtime maps ``clusters`` through
    ``ModelMeta.cluster_to_class``. ``scores`` (B, n_classes, H, W) float, the summed cluster probabilities of
    each class, is optional.
    """

    clusters: str = "clusters"
    labels: str | None = "labels"
    scores: str | None = None


class TilingSpec(_Strict):
    """Default tiling of frames larger than ``tile_size`` (H, W).

    Without a tile size, a frame of more than ``max_pixels`` (padded H x W) is cut into tiles of at most that
    many pixels (``usseg_sdk.tiling.budget_tile``), and no backend call gets more; None: the runtime's default
    (``usseg_sdk.tiling.DEFAULT_MAX_PIXELS``). ``overlap`` should be at least twice the net's receptive-field
    radius (export measures it).
    """

    tile_size: tuple[int, int] | None = None
    overlap: int = Field(default=0, ge=0)
    max_pixels: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _overlap_fits(self) -> TilingSpec:
        if self.tile_size is not None:
            if min(self.tile_size) <= 0:
                raise ValueError(f"tile_size must be positive, got {self.tile_size}")
            if 2 * self.overlap >= min(self.tile_size):
                raise ValueError(f"overlap {self.overlap} must be less than half the tile {self.tile_size}")
        return self


class MappingInfo(_Strict):
    """How ``cluster_to_class`` was obtained, and the calibration metrics when it was fitted on labels."""

    kind: Literal["identity", "hungarian", "many_to_one", "miou", "manual"] = "identity"
    n_images: int = Field(default=0, ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    source: str | None = None


class TrainingSummary(_Strict):
    """What the model was trained on, for a person reading ``usseg info``."""

    dataset: str | None = None
    n_images: int | None = None
    image_size: tuple[int, int] | None = None
    steps: int | None = None
    epochs: int | None = None
    seconds: float | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class ModelMeta(_Strict):
    """The versioned model contract. See the module docstring."""

    schema_version: int = SCHEMA_VERSION
    method: str = Field(min_length=1)
    n_clusters: int = Field(ge=1)
    classes: list[ClassInfo] = Field(min_length=1)
    cluster_to_class: list[int]
    mapping: MappingInfo = Field(default_factory=MappingInfo)
    input: InputSpec
    outputs: OutputSpec = Field(default_factory=OutputSpec)
    tiling: TilingSpec = Field(default_factory=TilingSpec)
    ignore_border: int = Field(default=0, ge=0, description=(
        "pixels along each frame edge whose predictions the runtime sets to the background class (a net's zero "
        "padding can paint a false defect ring there); SegmenterConfig.ignore_border overrides it"))
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    training: TrainingSummary = Field(default_factory=TrainingSummary)
    versions: dict[str, str] = Field(default_factory=dict)
    exporter: str | None = None
    opset: int | None = None
    created: str | None = None

    @model_validator(mode="after")
    def _mapping_fits(self) -> ModelMeta:
        if len(self.cluster_to_class) != self.n_clusters:
            raise ValueError(f"cluster_to_class has {len(self.cluster_to_class)} entries, n_clusters is "
                             f"{self.n_clusters}")
        bad = [c for c in self.cluster_to_class if not 0 <= c < len(self.classes)]
        if bad:
            raise ValueError(f"cluster_to_class refers to classes {sorted(set(bad))}, only "
                             f"{len(self.classes)} classes are defined")
        if self.schema_version > SCHEMA_VERSION or self.schema_version < 1:
            raise ValueError(f"schema_version {self.schema_version} is not supported")
        return self

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def background_id(self) -> int:
        """The class that removed predictions become (ignored border, regions below ``min_area``): the first class
        that is not a defect, else 0."""
        return next((i for i, c in enumerate(self.classes) if not c.defect), 0)

    # -- constructors --------------------------------------------------------------------------------
    @classmethod
    def uncalibrated(cls, *, method: str, n_clusters: int, input: InputSpec, **fields: Any) -> ModelMeta:
        """A model whose classes are its clusters (identity mapping): what export writes before calibration."""
        classes = [ClassInfo(name=f"cluster_{i}", color=c, defect=i != 0)
                   for i, c in enumerate(default_palette(n_clusters))]
        return cls(method=method, n_clusters=n_clusters, classes=classes,
                   cluster_to_class=list(range(n_clusters)), input=input, **fields)

    # -- serialisation -------------------------------------------------------------------------------
    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes, *, origin: str = "model metadata") -> ModelMeta:
        """Parse and validate; every failure is a ModelMetaError naming ``origin`` and the field."""
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelMetaError(f"{origin} is not valid JSON: {e}") from e
        return cls.from_dict(raw, origin=origin)

    @classmethod
    def from_dict(cls, raw: Any, *, origin: str = "model metadata") -> ModelMeta:
        if not isinstance(raw, dict):
            raise ModelMetaError(f"{origin} must be a JSON object, got {type(raw).__name__}")
        version = raw.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ModelMetaError(f"{origin} has no integer schema_version (got {version!r})")
        if version > SCHEMA_VERSION:
            raise ModelMetaError(f"{origin} uses metadata schema version {version}, newer than this usseg-sdk "
                                 f"understands ({SCHEMA_VERSION}); upgrade usseg-sdk")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                                 for err in e.errors())
            raise ModelMetaError(f"{origin} is malformed: {problems}") from e

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``model.json``-style sidecar atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        write_text_atomic(path, self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelMeta:
        path = Path(path)
        try:
            text = path.read_bytes()
        except OSError as e:
            raise ModelMetaError(f"cannot read model metadata {path}: {e}") from e
        return cls.from_json(text, origin=str(path))

    def to_metadata_props(self) -> dict[str, str]:
        """The key/value pairs export stores in ONNX ``metadata_props``."""
        return {METADATA_KEY: self.to_json(indent=None)}

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str], *, origin: str = "ONNX metadata") -> ModelMeta:
        """Read back from ONNX ``metadata_props`` (or onnxruntime's ``custom_metadata_map``)."""
        if METADATA_KEY not in props:
            raise ModelMetaError(f"{origin} has no {METADATA_KEY!r} entry: not a model exported by usseg "
                                 f"(keys present: {sorted(props)})")
        return cls.from_json(props[METADATA_KEY], origin=origin)


def default_palette(n: int) -> list[RGB]:
    """Distinct overlay colours (RGB): class 0 (background) dark grey, then saturated hues."""
    base: list[RGB] = [(40, 40, 40), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
                       (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
                       (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200),
                       (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128)]
    out = list(base[:n])
    i = 0
    while len(out) < n:  # golden-angle hues for large k (over-clustering heads)
        h = (i * 137.508) % 360
        out.append(_hsv_to_rgb(h, 0.75, 0.95))
        i += 1
    return out


def _hsv_to_rgb(h: float, s: float, v: float) -> RGB:
    c = v * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    m = v - c
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return (round((r + m) * 255), round((g + m) * 255), round((b + m) * 255))
