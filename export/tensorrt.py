"""TensorRT engine from the exported ONNX graph (``--format engine``), for TensorRT 10 and 11.

Build (TensorRT Python API, docs.nvidia.com/deeplearning/tensorrt ``Builder``, ``IBuilderConfig``,
``OnnxParser``, ``ITimingCache``, ``EngineInspector``; the 10.x -> 11.x migration guide):

* ``OnnxParser.parse_from_file`` on the ONNX file; explicit batch always (the only mode since 10.0);
* one optimisation profile ``min/opt/max`` for ``image`` (:func:`profile_shapes`: static graphs get their one
  shape, ``--dynamic`` ones the ``--min-shape/--opt-shape/--max-shape`` ranges, checked against the stride and
  ``min_size`` of the metadata);
* precision. fp32: a plain network. fp16: TensorRT 10 builds the float32 graph with ``BuilderFlag.FP16``
  (weak typing); TensorRT 11 removed that flag (and all precision flags: strongly typed networks only), so
  there the graph is first converted to float16 by :mod:`export.float16` (inputs/outputs keep their types: the
  uint8 image, the uint8 maps, float32 scores) and built strongly typed (``--trt-fp16-mode convert`` forces
  that path on 10 too). int8: the Q/DQ graph from :mod:`export.quantize` (symmetric int8 activations), built
  strongly typed (explicit quantization, the only INT8 path of 11);
* a persisted timing cache (``--timing-cache``, default ``~/.cache/usseg/tensorrt-<version>.timing``): loaded
  before the build, merged and written back (atomically) after it;
* ``ProfilingVerbosity.DETAILED``, then the engine inspector's JSON (10.x ``Format/Datatype`` strings, 11.x
  separate ``DataType``) gives each layer's precision: fp16 asked for and not delivered is an ExportError.

The ``tensorrt`` package is imported only inside :func:`build_engine` (``pip install 'usseg-sdk[trt]'``); the
rest of this module (shape parsing, profile checks, inspector parsing, sidecar) works without it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.errors import ExportError, TensorRTUnavailableError
from usseg_sdk.atomic import write_bytes_atomic
from usseg_sdk.meta import ModelMeta

log = logging.getLogger(__name__)

INSTALL_HINT = ("pip install 'usseg-sdk[trt]' (the tensorrt Python package >= 10, on a machine with an NVIDIA GPU "
                "and driver)")
FP16_MODES = ("auto", "flag", "convert")
Shape = tuple[int, int, int, int]  # (B, C, H, W)
_DTYPE_WORDS = {"fp32": "fp32", "float": "fp32", "fp16": "fp16", "half": "fp16", "int8": "int8", "bf16": "bf16",
                "int32": "int32", "int64": "int64", "uint8": "uint8", "bool": "bool", "fp8": "fp8"}


@dataclass(frozen=True)
class Profile:
    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass
class EngineReport:
    path: Path
    tensorrt: str
    precision: str
    fp16_mode: str | None  # "flag" (10.x weak typing) or "convert" (float16 graph, strongly typed)
    profile: Profile
    timing_cache: str | None
    layer_precisions: dict[str, int] = field(default_factory=dict)  # precision -> number of layers
    compute_layers: dict[str, int] = field(default_factory=dict)  # same, convolutions / matmuls only

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path.name, "tensorrt": self.tensorrt, "precision": self.precision,
                "fp16_mode": self.fp16_mode, "profile": self.profile.to_dict(), "timing_cache": self.timing_cache,
                "layer_precisions": self.layer_precisions, "compute_layers": self.compute_layers}


# -- shapes and profiles (no TensorRT needed) --------------------------------------------------------------------
def parse_shape(text: str, channels: int) -> Shape:
    """``"1x1x256x1600"`` (BxCxHxW), ``"4x256x1600"`` (BxHxW) or ``"256x1600"`` (HxW, batch 1) -> (B, C, H, W)."""
    parts = re.split(r"[x,]", text.strip().lower())
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ExportError(f"cannot read shape {text!r}: expected HxW, BxHxW or BxCxHxW, e.g. 4x256x1600") from None
    if len(values) == 2:
        values = [1, channels, *values]
    elif len(values) == 3:
        values = [values[0], channels, values[1], values[2]]
    elif len(values) != 4:
        raise ExportError(f"cannot read shape {text!r}: expected HxW, BxHxW or BxCxHxW")
    if values[1] != channels:
        raise ExportError(f"shape {text!r} has {values[1]} channels, the model takes {channels}")
    if min(values) < 1:
        raise ExportError(f"shape {text!r} has a non-positive size")
    return (values[0], values[1], values[2], values[3])


def profile_shapes(meta: ModelMeta, static_shape: Shape | None, min_shape: str | None = None,
                   opt_shape: str | None = None, max_shape: str | None = None) -> Profile:
    """The optimisation profile: the static shape itself, or the dynamic ranges (all three needed)."""
    c = meta.input.channels
    if static_shape is not None:
        if any(s is not None for s in (min_shape, opt_shape, max_shape)):
            raise ExportError("--min-shape/--opt-shape/--max-shape need a --dynamic export (the graph is static)")
        return Profile(static_shape, static_shape, static_shape)
    if min_shape is None or opt_shape is None or max_shape is None:
        raise ExportError("a TensorRT engine of a --dynamic graph needs --min-shape, --opt-shape and --max-shape "
                          "(e.g. 1x256x256, 4x256x1600, 8x256x1600)")
    profile = Profile(parse_shape(min_shape, c), parse_shape(opt_shape, c), parse_shape(max_shape, c))
    for axis, name in ((0, "batch"), (2, "height"), (3, "width")):
        lo, mid, hi = profile.min[axis], profile.opt[axis], profile.max[axis]
        if not lo <= mid <= hi:
            raise ExportError(f"profile {name} must satisfy min <= opt <= max, got {lo}, {mid}, {hi}")
    stride, floor = meta.input.stride, meta.input.min_size
    for label, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
        for axis in (2, 3):
            if shape[axis] % stride or shape[axis] < floor:
                raise ExportError(f"--{label}-shape {shape}: H and W must be multiples of the stride {stride} and "
                                  f"at least {floor}")
    return profile


# -- inspector JSON (no TensorRT needed) -------------------------------------------------------------------------
def layer_precisions(engine_info: str | dict) -> tuple[Counter, Counter]:
    """(precision -> layers, precision -> compute layers) from the inspector's JSON of TensorRT 10 or 11.

    A layer's precision is that of its first output (10.x: the ``Format/Datatype`` string such as
    ``"Channel major FP16 format where channel % 8 == 0"``; 11.x: ``DataType``). Compute layers are the
    convolutions and matrix multiplications, where fp16 matters.
    """
    info = json.loads(engine_info) if isinstance(engine_info, str) else engine_info
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    every, compute = Counter(), Counter()
    for layer in layers:
        if not isinstance(layer, dict):  # LAYER_NAMES_ONLY verbosity: plain names
            raise ExportError("the engine has no detailed layer information (build with ProfilingVerbosity.DETAILED)")
        outputs = layer.get("Outputs") or []
        precision = _tensor_precision(outputs[0]) if outputs else "none"
        every[precision] += 1
        kind = str(layer.get("LayerType", "")) + " " + str(layer.get("Name", ""))
        if re.search(r"conv|gemm|matrixmultiply|matmul", kind, re.IGNORECASE):
            compute[precision] += 1
    return every, compute


def _tensor_precision(tensor: dict) -> str:
    text = str(tensor.get("DataType") or tensor.get("Format/Datatype") or "")
    for word in re.findall(r"[A-Za-z]+\d*", text):
        found = _DTYPE_WORDS.get(word.lower())
        if found:
            return found
    return "unknown"


def check_precision(precision: str, compute: Counter) -> None:
    """fp16 / int8 asked for: at least one convolution or matmul must run in it (else TensorRT fell back)."""
    if precision in ("fp16", "int8") and compute.get(precision, 0) == 0:
        raise ExportError(f"TensorRT was asked for {precision} but no convolution/matmul layer runs in {precision} "
                          f"(compute layers by precision: {dict(compute)}); the GPU may lack fast {precision}")


def write_engine_sidecar(meta: ModelMeta, engine_path: Path) -> Path:
    """``model.engine.json`` beside ``model.engine``: the ModelMeta the runtime reads for the engine."""
    return meta.save(engine_path.with_name(engine_path.name + ".json"))


def default_timing_cache(version: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "usseg" / f"tensorrt-{version}.timing"


# -- the build (needs TensorRT) ----------------------------------------------------------------------------------
def import_tensorrt() -> Any:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        raise TensorRTUnavailableError(f"building a TensorRT engine needs TensorRT: {INSTALL_HINT}") from e
    if _major(trt) < 10:
        raise TensorRTUnavailableError(f"TensorRT {trt.__version__} is too old: export needs >= 10; {INSTALL_HINT}")
    return trt


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def resolve_fp16_mode(trt: Any, precision: str, fp16_mode: str) -> str | None:
    """``flag`` (10.x builder flag on the float32 graph) or ``convert`` (float16 graph); None unless fp16."""
    if fp16_mode not in FP16_MODES:
        raise ExportError(f"--trt-fp16-mode must be one of {FP16_MODES}, got {fp16_mode!r}")
    if precision != "fp16":
        return None
    has_flag = hasattr(trt.BuilderFlag, "FP16") and _major(trt) < 11
    if fp16_mode == "flag" and not has_flag:
        raise ExportError(f"TensorRT {trt.__version__} has no FP16 builder flag (removed in 11); use "
                          "--trt-fp16-mode convert (or auto)")
    if fp16_mode == "auto":
        return "flag" if has_flag else "convert"
    return fp16_mode


def build_engine(onnx_path: Path, engine_path: Path, *, precision: str, profile: Profile,
                 fp16_mode: str | None = None, timing_cache: Path | None = None,
                 workspace_mb: int | None = None, input_name: str = "image") -> EngineReport:
    """Build and serialise an engine from ``onnx_path`` (already float16 / Q/DQ when that is the mode)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = precision == "int8" or fp16_mode == "convert" or _major(trt) >= 11
    network = builder.create_network(_network_flags(trt, strongly_typed))
    _parse(trt, logger, network, onnx_path)
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16_mode == "flag":
        config.set_flag(trt.BuilderFlag.FP16)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)
    cache_path = timing_cache or default_timing_cache(trt.__version__)
    _load_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    write_bytes_atomic(engine_path, bytes(serialized))
    _save_timing_cache(config, cache_path)
    every, compute = layer_precisions(_inspect(trt, logger, bytes(serialized), input_name, profile.opt))
    check_precision(precision, compute)
    log.info("TensorRT %s engine %s: layers by precision %s", trt.__version__, engine_path, dict(every))
    return EngineReport(engine_path, trt.__version__, precision, fp16_mode, profile, str(cache_path),
                        dict(every), dict(compute))


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return (1 << int(flag)) if strongly_typed and flag is not None else 0


def _parse(trt: Any, logger: Any, network: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser rejects {onnx_path}: " + "; ".join(errors))


def _load_timing_cache(config: Any, path: Path) -> None:
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False: a cache of another GPU is not used
        log.warning("timing cache %s does not match this GPU / TensorRT; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is not None:
        write_bytes_atomic(path, bytes(cache.serialize()))


def _inspect(trt: Any, logger: Any, serialized: bytes, input_name: str, opt: Shape) -> str:
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise ExportError("the engine TensorRT just built cannot be deserialised")
    context = engine.create_execution_context()
    context.set_input_shape(input_name, opt)
    inspector = engine.create_engine_inspector()
    for attribute in ("execution_context", "context"):  # 10.x/11.x name, then the older one
        if hasattr(inspector, attribute):
            setattr(inspector, attribute, context)
            break
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)
