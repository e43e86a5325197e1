"""The export pipeline: checkpoint -> plain graph -> ONNX (-> calibration) (-> fp16 / int8) -> verify (-> engine).

Everything is written into a staging folder beside the output folder and moved into place only after the last
step succeeded, so an interrupted or failed export leaves the output folder as it was (or absent): never a
half-written file, never a new ``model.onnx`` beside an old ``model.json``. A failed verification writes only
``verify.failed.json`` (the numbers) into the output folder, unless ``keep_failed`` asks for the artifacts too.

Output folder::

    model.onnx          the graph in the requested precision, ModelMeta embedded (metadata_props["usseg.meta"])
    model.json          the same ModelMeta (sidecar)
    verify.json         verification numbers (export.verify), export and calibration details
    model.engine        with --format engine: the TensorRT engine, and its sidecar model.engine.json
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx
import torch

from export import float16, onnx_export
from export.calibrate import CalibrationOptions, CalibrationResult, calibrate, set_mapping
from export.channel_softmax import decompose_channel_softmax
from export.einsum_conv import einsum_to_conv
from export.errors import ExportError, VerificationError
from export.frames import FrameFolder, FrameProgress, int8_frames, largest_size, training_frames, verify_frames
from export.graph import InferenceGraph, build_inference_graph
from export.quantize import Int8Options, Int8Result, quantize_int8
from export.receptive_field import overlap_for, receptive_radius
from export.verify import DEFAULT_THRESHOLDS, Thresholds, deployed_input, load_frames, verify_model
from training.methods.base import Method
from usseg_sdk.atomic import write_text_atomic
from usseg_sdk.calibrate import class_names_for
from usseg_sdk.config import SegmenterConfig
from usseg_sdk.meta import ModelMeta, OutputSpec, TilingSpec, TrainingSummary
from usseg_sdk.preprocess import round_up
from usseg_sdk.segmenter import Segmenter
from usseg_sdk.tiling import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
FORMATS = ("onnx", "engine")
DEFAULT_SIZE = (256, 256)  # static input when the method has no native size and --input-size is not given
ARTIFACTS = ("model.onnx", "model.json", "verify.json", "verify.failed.json", "model.engine", "model.engine.json")


@dataclass(frozen=True)
class EngineOptions:
    min_shape: str | None = None
    opt_shape: str | None = None
    max_shape: str | None = None
    fp16_mode: str = "auto"
    timing_cache: Path | None = None
    workspace_mb: int | None = None


@dataclass(frozen=True)
class ExportOptions:
    out: Path
    formats: tuple[str, ...] = ("onnx",)
    precision: str = "fp32"
    head: str = "main"
    scores: bool = False
    dynamic: bool = True  # symbolic batch, height and width; False: a static graph of input_size / static_from
    input_size: tuple[int, int] | None = None  # (H, W) of a static graph (and of the dynamic export's example)
    static_from: Path | None = None  # a static graph sized to hold the frames of this folder (with dynamic=False)
    batch_size: int = 1  # static batch
    exporter: str = "auto"
    opset: int = onnx_export.OPSET
    tile_size: tuple[int, int] | None = None
    tile_overlap: int | None = None  # default: from the measured receptive field (export.receptive_field)
    max_pixels: int | None = None  # ModelMeta.tiling.max_pixels; default usseg_sdk.tiling.DEFAULT_MAX_PIXELS
    calibration: CalibrationOptions | None = None
    verify: bool = True
    verify_images: Path | None = None  # default: see export.frames (the user's frames, else the bundled sample)
    verify_masks: Path | None = None
    verify_count: int = 16
    thresholds: Thresholds | None = None  # default: DEFAULT_THRESHOLDS[precision]
    int8: Int8Options = field(default_factory=Int8Options)
    int8_calibration: Path | None = None  # default: see export.frames (the user's frames, never the sample)
    int8_count: int = 32
    training_frames: Path | None = None  # the run's training data folder (export_checkpoint reads the config)
    engine: EngineOptions = field(default_factory=EngineOptions)
    keep_failed: bool = False
    progress: bool = False  # progress of int8 calibration and verification on stdout (the CLI sets it)


@dataclass
class ExportResult:
    out: Path
    meta: ModelMeta
    files: list[Path]
    verify: dict[str, Any] | None
    calibration: CalibrationResult | None = None
    details: dict[str, Any] = field(default_factory=dict)  # verify.json's "export": graph, tiling, int8 frames


# -- entry points -----------------------------------------------------------------------------------------------
def export_checkpoint(source: Path, options: ExportOptions, prefer: str = "best") -> ExportResult:
    """Load a run directory or checkpoint (``training.checkpoint.load_method``) and export it."""
    from training.checkpoint import load_method  # CheckpointError (names the file) propagates to the caller

    method, run_info = load_method(source, device="cpu", prefer=prefer)
    if options.training_frames is None:
        options = replace(options, training_frames=training_frames(run_info.config))
    return export_method(method, options, training=training_summary(run_info))


def export_method(method: Method, options: ExportOptions, training: TrainingSummary | None = None) -> ExportResult:
    """Export a method built or loaded in this process (see the module docstring)."""
    _check_options(options)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{options.out.name}.staging-", dir=options.out.parent))
    try:
        result = _export_into(method, options, training or TrainingSummary(), staging)
        _install(staging, options.out)
        result.out = options.out
        result.files = [options.out / p.name for p in result.files]
        return result
    except VerificationError as e:
        if options.keep_failed:
            _install(staging, options.out)
        write_text_atomic(options.out / "verify.failed.json", json.dumps(e.report, indent=2) + "\n")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_options(o: ExportOptions) -> None:
    if o.precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {PRECISIONS}, got {o.precision!r}")
    bad = [f for f in o.formats if f not in FORMATS]
    if bad or not o.formats:
        raise ExportError(f"--format takes {FORMATS}, got {list(o.formats)}")
    if o.batch_size < 1 or o.verify_count < 1 or o.int8_count < 1:
        raise ExportError("batch size and image counts must be >= 1")
    if o.dynamic and o.static_from is not None:
        raise ExportError("--static-from makes a static graph: it cannot be combined with a dynamic export")
    if o.max_pixels is not None and o.max_pixels < 1:
        raise ExportError(f"--max-pixels must be >= 1, got {o.max_pixels}")
    if "engine" in o.formats:  # fail before the export work, not after it
        from export import tensorrt

        tensorrt.import_tensorrt()


# -- the steps --------------------------------------------------------------------------------------------------
@dataclass
class _Float32Graph:
    model: onnx.ModelProto
    meta: ModelMeta
    inference_net: torch.nn.Module  # the method's own (un-rewritten) net: the verification reference
    details: dict[str, Any]


def _export_into(method: Method, o: ExportOptions, training: TrainingSummary, staging: Path) -> ExportResult:
    built = _float32_graph(method, o, training)
    model, meta = built.model, built.meta
    fp32_path = staging / "model.fp32.onnx"
    _write(model, meta, fp32_path)
    cal = None
    if o.calibration is not None:
        cal = calibrate(fp32_path, o.calibration)
        meta = cal.meta
        _write(set_mapping(model, meta), meta, fp32_path)
    final, meta, extra = _convert_precision(model, meta, fp32_path, staging, o)
    details = {**built.details, **extra}
    report = _verify(final, InferenceGraph(built.inference_net).eval(), meta, o) if o.verify else None
    files = [final, staging / "model.json"]
    if "engine" in o.formats:
        files += _build_engine(final, fp32_path, meta, o, staging, details)
    fp32_path.unlink(missing_ok=True)
    summary = {**(report or {"passed": None, "skipped": "--no-verify"}), "export": details}
    if cal is not None:
        summary["calibration"] = cal.report()
    write_text_atomic(staging / "verify.json", json.dumps(summary, indent=2) + "\n")
    files.append(staging / "verify.json")
    return ExportResult(staging, meta, files, report, cal, details)


def _float32_graph(method: Method, o: ExportOptions, training: TrainingSummary) -> _Float32Graph:
    """Plain graph -> ONNX with the contract tail and an identity mapping, and its (uncalibrated) ModelMeta."""
    heads = method.eval_heads()
    if o.head not in heads:
        raise ExportError(f"method {method.name!r} has heads {sorted(heads)}, not {o.head!r} (--head)")
    method.eval()
    spec = method.input_spec().model_copy(update={"dtype": "uint8", "layout": "NCHW", "normalized_in_graph": True,
                                                  "max_value": _training_max_value(training)})
    example = _example(spec, o)
    inference_net = method.inference_net(o.head)
    graph, folded = build_inference_graph(inference_net, example)
    radius = receptive_radius(InferenceGraph(inference_net).eval(), spec.channels, spec.stride, spec.min_size)
    exported = onnx_export.export_graph(graph, example, dynamic=o.dynamic, min_size=spec.min_size,
                                        exporter=o.exporter, opset=o.opset)
    k = heads[o.head]
    model = onnx_export.append_contract_tail(exported.model, list(range(k)), k, o.scores)
    softmaxes = decompose_channel_softmax(model)  # onnxruntime's Softmax over axis 1 is its slowest node
    meta = ModelMeta.uncalibrated(
        method=method.name, n_clusters=k, input=spec,
        outputs=OutputSpec(scores="scores" if o.scores else None), tiling=_tiling(spec, o, radius, example),
        precision="fp32",
        training=training, versions=package_versions(), exporter=exported.exporter, opset=o.opset,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    details = {"exporter": exported.exporter, "opset": o.opset, "head": o.head, "dynamic": o.dynamic,
               "example_shape": list(example.shape), "receptive_field_radius": radius,
               "folded_batchnorms": len(folded),
               "decomposed_softmaxes": softmaxes, "nodes": onnx_export.node_counts(model)}
    return _Float32Graph(model, meta, inference_net, details)


def user_frame_size(o: ExportOptions) -> tuple[int, int] | None:
    """The (H, W) of a static graph sized from the user's frames: ``static_from``, else the calibration, verification
    or int8 frames; the largest height and width among them (smaller frames are padded). None with no such folder.

    A net trained on crops is exported for the frames the line delivers, not for the crop: a frame larger than a
    static graph is tiled by the runtime.
    """
    folder = o.static_from or (o.calibration.images if o.calibration is not None else None) or o.verify_images \
        or o.int8_calibration
    if folder is None:
        return None
    size = largest_size(Path(folder))
    log.info("static input %dx%d: the largest frame size in %s", size[0], size[1], folder)
    return size


def _example(spec: Any, o: ExportOptions) -> torch.Tensor:
    """The uint8 example input: the static shape, or for a dynamic graph a batch of 2 (torch.export specialises 1)
    at ``input_size``, else the net's native size, else :data:`DEFAULT_SIZE` (any size works after export)."""
    h, w = o.input_size or (None if o.dynamic else user_frame_size(o)) or spec.native_size or DEFAULT_SIZE
    h, w = (round_up(max(h, spec.min_size), spec.stride), round_up(max(w, spec.min_size), spec.stride))
    if o.input_size is not None and (h, w) != tuple(o.input_size):
        raise ExportError(f"--static {o.input_size[0]}x{o.input_size[1]} must be a multiple of the stride "
                          f"{spec.stride} and at least {spec.min_size}; e.g. {h}x{w}")
    batch = 2 if o.dynamic else o.batch_size
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, spec.channels, h, w), dtype=torch.uint8, generator=generator)


def _tiling(spec: Any, o: ExportOptions, radius: int | None, example: torch.Tensor) -> TilingSpec:
    """Tile size (--tile-size), overlap (--tile-overlap, else from the receptive field) and pixel budget.

    A static graph is tiled at its own size; its overlap is kept below half of it (the runtime's requirement)."""
    overlap = o.tile_overlap if o.tile_overlap is not None else overlap_for(radius, spec.stride)
    tile = o.tile_size if o.tile_size is not None else (None if o.dynamic else tuple(example.shape[2:]))
    if tile is not None and o.tile_overlap is None:
        overlap = min(overlap, max(0, (min(tile) - 1) // 2 // spec.stride * spec.stride))
    return TilingSpec(tile_size=o.tile_size, overlap=overlap, max_pixels=o.max_pixels or DEFAULT_MAX_PIXELS)


def _write(model: onnx.ModelProto, meta: ModelMeta, path: Path) -> None:
    onnx_export.set_metadata(model, meta)
    onnx_export.check_contract(model, meta)
    onnx_export.save_model(model, path)
    meta.save(path.with_name("model.json"))


def _convert_precision(model: onnx.ModelProto, meta: ModelMeta, fp32_path: Path, staging: Path,
                       o: ExportOptions) -> tuple[Path, ModelMeta, dict[str, Any]]:
    final = staging / "model.onnx"
    meta = meta.model_copy(update={"precision": o.precision})
    details: dict[str, Any] = {"precision": o.precision}
    if o.precision == "fp32":
        model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's graph stays as it was
        details["einsum_convs"] = einsum_to_conv(model)  # PiCIE's classifier as a 1x1 Conv (export/einsum_conv.py)
        _write(model, meta, final)
    elif o.precision == "fp16":
        converted = float16.convert_to_float16(model)
        _write(converted, meta, final)
        details["nodes_fp16"] = onnx_export.node_counts(converted)
    else:
        int8, used = _quantize(fp32_path, staging / "model.int8.onnx", meta, o)
        quantized = onnx.load(str(int8.path))
        int8.path.unlink()
        details["einsum_convs"] = einsum_to_conv(quantized)  # after quantization: its float region is unchanged
        _write(quantized, meta, final)
        details["int8"] = {"float_nodes": int8.float_nodes, "quantized_layers": int8.quantized_nodes,
                           "calibration_frames": int8.n_calibration, "frames": used, "options": _plain(o.int8)}
    return final, meta, details


def _int8_folder(o: ExportOptions) -> FrameFolder:
    return int8_frames((o.int8_calibration, "--int8-frames"), (o.training_frames, "the run's training data"),
                       (o.calibration.images if o.calibration is not None else None, "the --calibrate frames"),
                       (o.verify_images, "--verify-frames"))


def _quantize(fp32_path: Path, out: Path, meta: ModelMeta, o: ExportOptions) -> tuple[Int8Result, str]:
    """int8 on the user's frames, each fed as the line feeds it (whole, or its first tile); returns the result
    and which frames were used."""
    source = _int8_folder(o)
    frames = load_frames(source.folder, count=o.int8_count, channels=meta.input.channels)
    used = source.describe(len(frames))
    log.info("int8 calibration: %s", used)
    with Segmenter(fp32_path, config=SegmenterConfig(device="cpu")) as seg:
        batches = [deployed_input(seg, f.frame) for f in frames]
    options = o.int8 if "engine" not in o.formats else replace(o.int8, target="tensorrt")
    progress = FrameProgress("int8 calibration", len(batches)) if o.progress else None
    try:
        return quantize_int8(fp32_path, out, batches, options, progress=progress), used
    finally:
        if progress is not None:
            progress.close()


def _verify(model_path: Path, reference: InferenceGraph, meta: ModelMeta, o: ExportOptions) -> dict[str, Any]:
    cal = o.calibration
    source = verify_frames(
        (o.verify_images, "--verify-frames", o.verify_masks),
        (cal.images if cal is not None else None, "the --calibrate frames", cal.masks if cal is not None else None),
        (o.int8_calibration if o.precision == "int8" else None, "--int8-frames", None),
        (o.training_frames, "the run's training data", None))
    frames = load_frames(source.folder, source.masks, count=o.verify_count, channels=meta.input.channels)
    log.info("verification: %s", source.describe(len(frames)))
    thresholds = o.thresholds or DEFAULT_THRESHOLDS[o.precision]
    n_gt = meta.n_classes if meta.mapping.kind != "identity" else None
    if n_gt is None and source.masks is not None:
        names = class_names_for(None, None, source.masks)  # labels.txt beside the masks
        n_gt = len(names) if names else None
    progress = FrameProgress("verification", len(frames)) if o.progress else None
    try:
        report = verify_model(model_path, reference, frames, thresholds=thresholds, n_gt_classes=n_gt,
                              progress=progress)
    except VerificationError as e:
        e.report["frames"] = source.describe(len(frames))
        raise
    finally:
        if progress is not None:
            progress.close()
    report["frames"] = source.describe(len(frames))
    return report


def _build_engine(final: Path, fp32_path: Path, meta: ModelMeta, o: ExportOptions, staging: Path,
                  details: dict[str, Any]) -> list[Path]:
    from export import tensorrt

    trt = tensorrt.import_tensorrt()
    static = None if o.dynamic else _static_shape(final)
    shapes = (o.engine.min_shape, o.engine.opt_shape, o.engine.max_shape)
    if static is None and shapes == (None, None, None):
        shapes = default_profile(meta)
        log.info("TensorRT profile (--min/--opt/--max-shape): %s, %s, %s", *shapes)
    profile = tensorrt.profile_shapes(meta, static, *shapes)
    fp16_mode = tensorrt.resolve_fp16_mode(trt, o.precision, o.engine.fp16_mode)
    source = fp32_path if fp16_mode == "flag" else final  # 10.x builder flag: the float32 graph
    engine = staging / "model.engine"
    report = tensorrt.build_engine(source, engine, precision=o.precision, profile=profile, fp16_mode=fp16_mode,
                                   timing_cache=o.engine.timing_cache, workspace_mb=o.engine.workspace_mb)
    versions = {**meta.versions, "tensorrt": report.tensorrt}
    engine_meta = meta.model_copy(update={"versions": versions})
    details["engine"] = report.to_dict()
    return [engine, tensorrt.write_engine_sidecar(engine_meta, engine)]


def default_profile(meta: ModelMeta) -> tuple[str, str, str]:
    """min/opt/max shapes of a dynamic engine when none are given: from the smallest input to a square of the
    pixel budget (the runtime tiles what is larger), optimised for 1024 x 1024."""
    stride, budget = meta.input.stride, meta.tiling.max_pixels or DEFAULT_MAX_PIXELS
    low = round_up(max(meta.input.min_size, 2 * stride), stride)
    high = max(low, math.isqrt(budget) // stride * stride)
    mid = min(high, max(low, round_up(1024, stride)))
    return f"1x{low}x{low}", f"1x{mid}x{mid}", f"1x{high}x{high}"


def _static_shape(path: Path) -> tuple[int, int, int, int]:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims)  # type: ignore[return-value]


def _install(staging: Path, out: Path) -> None:
    """Move the staged files into ``out``: one rename when ``out`` does not exist, else file by file (each
    atomic), removing artifacts of an earlier export that this one did not produce (a stale engine).

    Temporary files and folders are created private (0600 / 0700); the installed ones get the umask's modes."""
    _apply_umask(staging)
    if not out.exists():
        os.rename(staging, out)
        staging.mkdir()  # the caller's cleanup removes it
        return
    produced = {p.name for p in staging.iterdir() if p.is_file()}
    for name in sorted(produced, key=lambda n: n.endswith(".onnx") or n.endswith(".engine")):
        os.replace(staging / name, out / name)  # sidecars first, models last
    for name in ARTIFACTS:
        if name not in produced:
            (out / name).unlink(missing_ok=True)


def _apply_umask(staging: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    for path in staging.iterdir():
        path.chmod(0o666 & ~umask)


# -- metadata helpers -------------------------------------------------------------------------------------------
def training_summary(run_info: Any) -> TrainingSummary:
    """What ModelMeta.training records from ``training.checkpoint.RunInfo``."""
    config = dict(run_info.config or {})
    train = (config.get("data") or {}).get("train") or {}
    crop = train.get("crop")
    size = (crop, crop) if isinstance(crop, int) else (tuple(crop) if isinstance(crop, list | tuple) else None)
    dataset = train.get("root") or train.get("kind")
    return TrainingSummary(dataset=str(dataset) if dataset else None, n_images=_count_images(train),
                           image_size=size, steps=run_info.step,
                           epochs=run_info.epoch, seconds=round(run_info.elapsed_s, 1),
                           config=json.loads(json.dumps(config, default=str)))


def _training_max_value(training: TrainingSummary) -> int | None:
    """The pixel value training mapped to 1.0 (``data.train.max_value``) when the run set one: the runtime scales
    16-bit frames by it (``InputSpec.max_value``), so a 12-bit camera is read as it was in training."""
    value = ((training.config or {}).get("data") or {}).get("train", {}).get("max_value")
    return int(value) if value else None


def _count_images(train: dict[str, Any]) -> int | None:
    """Images of a ``folder`` training set, when its root is reachable from here (best effort, else None)."""
    root = train.get("root")
    if train.get("kind") != "folder" or not root or not Path(root).is_dir():
        return None
    from usseg_sdk.sources import IMAGE_SUFFIXES

    return sum(1 for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__}
    for dist in ("onnxruntime", "onnxscript", "usseg-sdk", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if "usseg-sdk" not in out:
        import usseg_sdk

        out["usseg-sdk"] = usseg_sdk.__version__
    return out


def _plain(options: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}
