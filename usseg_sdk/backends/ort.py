"""onnxruntime backend: CPU, CUDA and TensorRT execution providers, with explicit provider options.

Needs ``onnxruntime`` (``pip install 'usseg-sdk[cpu]'``) or ``onnxruntime-gpu`` (``[gpu]``) — one of them, never
both: the two wheels install the same ``onnxruntime`` module and whichever came last wins, which typically
leaves a GPU machine running on the CPU provider without an error. :func:`installed_distributions` detects that
and the backend logs a WARNING (``usseg doctor`` reports it too).

onnxruntime also falls back to the CPU *silently* when a GPU provider is compiled in but its libraries (CUDA,
cuDNN, TensorRT) fail to load; the backend compares the providers the session really got with the ones asked
for, and raises :class:`BackendUnavailableError` (explicit device) or logs a WARNING (``device="auto"``).

``InferenceSession.run`` is thread-safe, so one backend serves all threads and ``clone()`` returns itself.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import numpy as np

from usseg_sdk.backends.base import Backend, TensorInfo
from usseg_sdk.config import SegmenterConfig
from usseg_sdk.errors import BackendUnavailableError, ModelLoadError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# Distributions that all install the `onnxruntime` module.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-qnn", "onnxruntime-training", "ort-nightly", "ort-nightly-gpu")
_ORT_TYPES = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(double)": np.float64, "tensor(bool)": np.bool_}
# onnxruntime graph transformers the CPU sessions run without. QDQPropagationTransformer moves a QuantizeLinear up
# through ReLU / MaxPool; after a layer int8 export keeps in float (ResNet's first conv) that leaves a uint8 MaxPool
# in NCHW layout, onnxruntime's slow generic kernel: PiCIE int8 at 256x1600, one thread, 250 -> 197 ms without it,
# IIC int8 unchanged. The transform is an identity on values, so leaving it out changes no output.
CPU_DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)
_conflict_warned = False


def import_onnxruntime() -> Any:
    """``import onnxruntime`` or a BackendUnavailableError saying which extra to install."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise BackendUnavailableError(
            "onnxruntime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA/TensorRT), never "
            "both; they are usseg-sdk's [cpu] and [gpu] extras"
        ) from e


def installed_distributions() -> list[str]:
    """The installed distributions that provide the ``onnxruntime`` module (normally exactly one)."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def conflict_message(dists: list[str]) -> str | None:
    """A warning text when several onnxruntime distributions are installed together, else None."""
    if len(dists) < 2:
        return None
    return (f"several onnxruntime distributions are installed together ({', '.join(dists)}); they share the "
            "'onnxruntime' module and the last one installed wins, which often leaves only the CPU provider. "
            "Fix: pip uninstall -y " + " ".join(dists) + " && pip install onnxruntime-gpu (or onnxruntime for the "
            "CPU only)")


def warn_if_conflicting() -> None:
    global _conflict_warned
    message = conflict_message(installed_distributions())
    if message and not _conflict_warned:
        _conflict_warned = True
        log.warning(message)


def resolve_providers(device: str, config: SegmenterConfig, available: list[str]) -> list[tuple[str, dict]]:
    """Providers (with options) for ``device``; raises BackendUnavailableError for a missing one.

    ``device="auto"`` picks CUDA when the provider is there and otherwise the CPU (logged at INFO: no GPU was asked
    for). It never picks TensorRT on its own: building an engine takes minutes, which a line should choose
    (``device="tensorrt"``).
    """
    if config.providers is not None:
        missing = [p for p in config.providers if p not in available]
        if missing:
            raise BackendUnavailableError(f"onnxruntime providers {missing} are not available here (available: "
                                          f"{available}); {_install_hint(missing)}")
        return [(p, _options(p, config)) for p in config.providers]
    if device == "auto":
        if CUDA in available:
            return [(CUDA, _options(CUDA, config)), (CPU, {})]
        # INFO, not WARNING: device "auto" (the default) did not ask for a GPU, and a CPU line is a normal install
        log.info("device='auto': no CUDA execution provider in onnxruntime (available: %s), running on the CPU. "
                 "For the GPU: pip install 'usseg-sdk[gpu]' (and uninstall the CPU-only 'onnxruntime')", available)
        return [(CPU, {})]
    wanted = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TENSORRT, CUDA, CPU]}[device]
    if wanted[0] not in available:
        raise BackendUnavailableError(f"device={device!r} needs onnxruntime's {wanted[0]}, which is not available "
                                      f"(available: {available}); {_install_hint([wanted[0]])}")
    return [(p, _options(p, config)) for p in wanted if p in available]


def _install_hint(providers: list[str]) -> str:
    if TENSORRT in providers:
        return "install 'usseg-sdk[gpu]' and 'usseg-sdk[trt]' (onnxruntime-gpu plus the TensorRT libraries)"
    if CUDA in providers:
        hint = "install 'usseg-sdk[gpu]' (onnxruntime-gpu) with a matching CUDA/cuDNN"
        conflict = conflict_message(installed_distributions())
        return hint + (f". Also: {conflict}" if conflict else "")
    return "see `usseg doctor`"


def _options(provider: str, config: SegmenterConfig) -> dict[str, Any]:
    if provider == CUDA:
        return {"device_id": config.device_id}
    if provider == TENSORRT:
        opts: dict[str, Any] = {"device_id": config.device_id, "trt_fp16_enable": config.trt_fp16}
        if config.trt_cache_dir is not None:
            Path(config.trt_cache_dir).mkdir(parents=True, exist_ok=True)
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(config.trt_cache_dir),
                        trt_timing_cache_enable=True, trt_timing_cache_path=str(config.trt_cache_dir))
        if config.trt_workspace_mb is not None:
            opts["trt_max_workspace_size"] = config.trt_workspace_mb * (1 << 20)
        return opts
    return {}


def disabled_optimizers(requested: list[tuple[str, dict]]) -> list[str]:
    """:data:`CPU_DISABLED_OPTIMIZERS` for a CPU session; none when a GPU provider comes first (TensorRT places
    its own Q/DQ and the CUDA kernels were not measured)."""
    return list(CPU_DISABLED_OPTIMIZERS) if requested and requested[0][0] == CPU else []


class OnnxRuntimeBackend(Backend):
    """An ``onnxruntime.InferenceSession`` on the providers :func:`resolve_providers` chose."""

    name = "onnxruntime"
    thread_safe = True

    def __init__(self, path: Path, device: str, config: SegmenterConfig) -> None:
        super().__init__(path)
        ort = import_onnxruntime()
        warn_if_conflicting()
        self.requested = resolve_providers(device, config, ort.get_available_providers())
        options = ort.SessionOptions()
        if config.intra_op_threads is not None:
            options.intra_op_num_threads = config.intra_op_threads
        if config.inter_op_threads is not None:
            options.inter_op_num_threads = config.inter_op_threads
        options.log_severity_level = 3  # errors only; the provider check below reports fallbacks itself
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=[p for p, _ in self.requested],
                                                provider_options=[o for _, o in self.requested],
                                                disabled_optimizers=disabled_optimizers(self.requested))
        except Exception as e:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            raise ModelLoadError(f"onnxruntime cannot load {path}: {type(e).__name__}: {e}") from e
        self._check_providers(device)
        self._inputs = [_info(t) for t in self.session.get_inputs()]
        self._outputs = [_info(t) for t in self.session.get_outputs()]

    def _check_providers(self, device: str) -> None:
        got = self.session.get_providers()
        first = self.requested[0][0]
        if first not in got:
            message = (f"onnxruntime could not start {first} (its CUDA/cuDNN/TensorRT libraries failed to load) "
                       f"and fell back to {got}; {_install_hint([first])}")
            if device == "auto":
                log.warning("device='auto': %s", message)
            else:
                raise BackendUnavailableError(message)

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        values = self.session.run(output_names, feeds)
        return dict(zip(output_names, values, strict=True))

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def describe(self) -> dict[str, Any]:
        ort = import_onnxruntime()
        return {**super().describe(), "onnxruntime": ort.__version__, "providers": self.session.get_providers(),
                "requested_providers": [p for p, _ in self.requested],
                "disabled_optimizers": disabled_optimizers(self.requested)}


def _info(node: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else None for d in node.shape) if node.shape is not None else None
    dtype = _ORT_TYPES.get(node.type)
    return TensorInfo(node.name, np.dtype(dtype) if dtype is not None else None, shape)
