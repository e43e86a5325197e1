"""Native TensorRT backend for ``.engine`` / ``.plan`` files (TensorRT 10 and 11, name-based tensor API).

Requires (``pip install 'usseg-sdk[trt]'``): the ``tensorrt`` Python package >= 10, ``cuda-python`` for device
memory and streams (``cuda.bindings.runtime``, or ``cuda.cudart`` in cuda-python < 12.6), an NVIDIA GPU with a
driver new enough for both. No torch, no pycuda. The engine must have been built by the same TensorRT version on
the same GPU model (TensorRT's rule); otherwise loading fails with a :class:`ModelLoadError` saying so.

The API used is the one TensorRT 10 introduced and 11 keeps: ``ICudaEngine.num_io_tensors``,
``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_dtype`` / ``get_tensor_shape`` /
``get_tensor_profile_shape``, ``IExecutionContext.set_input_shape``, ``get_tensor_shape``, ``set_tensor_address``
and ``execute_async_v3(stream)``. The 8.x binding-index API (removed in 10) is not used.

Threads: an execution context may run one inference at a time, so ``run`` holds a lock; for parallel inference
give each thread ``clone()`` (a new context, stream and device buffers on the same deserialised engine).
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from usseg_sdk.backends.base import Backend, TensorInfo
from usseg_sdk.config import SegmenterConfig
from usseg_sdk.errors import BackendUnavailableError, InvalidFrameError, ModelLoadError

log = logging.getLogger(__name__)
_INSTALL = "pip install 'usseg-sdk[trt]' (tensorrt>=10 and cuda-python; needs an NVIDIA GPU and driver)"


def import_tensorrt() -> Any:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        raise BackendUnavailableError(f"TensorRT is not installed: {_INSTALL}") from e
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} is too old: usseg needs TensorRT >= 10 "
                                      f"(name-based tensor API); {_INSTALL}")
    return trt


def import_cudart() -> Any:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python >= 12.6, then the older layout
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailableError(f"cuda-python is not installed (the TensorRT backend needs it for device "
                                  f"memory): {_INSTALL}")


class _Cuda:
    """The few CUDA runtime calls the backend makes, each checked (cuda-python returns ``(err, *values)``)."""

    def __init__(self, cudart: Any, device_id: int) -> None:
        self.rt = cudart
        self.device_id = device_id

    def call(self, fn: str, *args: Any) -> Any:
        result = getattr(self.rt, fn)(*args)
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendUnavailableError(f"CUDA {fn} failed: {err}")
        return values[0] if len(values) == 1 else (values or None)

    def set_device(self) -> None:
        self.call("cudaSetDevice", self.device_id)

    def h2d(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes, kind, stream)

    def d2h(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes, kind, stream)


class _Engine:
    """A deserialised engine and its I/O tensors, shared by every clone."""

    def __init__(self, path: Path, trt: Any) -> None:
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        if hasattr(trt, "init_libnvinfer_plugins"):
            trt.init_libnvinfer_plugins(self.logger, "")
        self.runtime = trt.Runtime(self.logger)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"cannot read TensorRT engine {path}: {e}") from e
        self.engine = self.runtime.deserialize_cuda_engine(data) if data else None
        if self.engine is None:
            raise ModelLoadError(f"{path} is not a TensorRT engine that TensorRT {trt.__version__} can load on this "
                                 "GPU (truncated, or built by another TensorRT version or GPU model: rebuild it)")
        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(self._info(name, is_input))

    def _info(self, name: str, is_input: bool) -> TensorInfo:
        dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
        dims = tuple(int(d) for d in self.engine.get_tensor_shape(name))
        shape = tuple(d if d >= 0 else None for d in dims)
        if not (is_input and None in shape):
            return TensorInfo(name, dtype, shape)
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)  # (min, opt, max) of profile 0
        return TensorInfo(name, dtype, shape, tuple(int(d) for d in high), tuple(int(d) for d in low))


class TensorRTBackend(Backend):
    """One execution context with its own CUDA stream and device buffers (grown on demand)."""

    name = "tensorrt"
    thread_safe = False

    def __init__(self, path: Path, device: str, config: SegmenterConfig, *, _engine: _Engine | None = None) -> None:
        super().__init__(path)
        if device == "cpu":
            raise BackendUnavailableError(f"{path} is a TensorRT engine, which runs only on an NVIDIA GPU; for the "
                                          "CPU load the exported model.onnx instead")
        self.config = config
        self._cuda = _Cuda(import_cudart(), config.device_id)
        self._shared = _engine or _Engine(path, import_tensorrt())
        self._cuda.set_device()
        self.context = self._shared.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError(f"TensorRT could not create an execution context for {path} "
                                          "(out of GPU memory?)")
        self.stream = self._cuda.call("cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._lock = threading.Lock()

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._shared.inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._shared.outputs

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._cuda.call("cudaFree", ptr)
            ptr = int(self._cuda.call("cudaMalloc", max(nbytes, 1)))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._cuda.device_id != 0:
                self._cuda.set_device()  # the current device is per host thread
            for name, array in feeds.items():
                array = np.ascontiguousarray(array)
                if not self.context.set_input_shape(name, tuple(array.shape)):
                    raise InvalidFrameError(f"input {name!r} shape {array.shape} is outside the engine's "
                                            "optimisation profile; rebuild the engine for this size or tile smaller")
                ptr = self._device_buffer(name, array.nbytes)
                self._cuda.h2d(ptr, array, self.stream)
                self.context.set_tensor_address(name, ptr)
            hosts: dict[str, np.ndarray] = {}
            for info in self.outputs:  # every output needs an address, requested or not
                host = np.empty(tuple(int(d) for d in self.context.get_tensor_shape(info.name)), info.dtype)
                self.context.set_tensor_address(info.name, self._device_buffer(info.name, host.nbytes))
                hosts[info.name] = host
            if not self.context.execute_async_v3(self.stream):
                raise BackendUnavailableError(f"TensorRT execute_async_v3 failed on {self.path}")
            for name in output_names:
                self._cuda.d2h(hosts[name], self._buffers[name][0], self.stream)
            self._cuda.call("cudaStreamSynchronize", self.stream)
            return {name: hosts[name] for name in output_names}

    def clone(self) -> TensorRTBackend:
        return TensorRTBackend(self.path, "tensorrt", self.config, _engine=self._shared)

    def describe(self) -> dict[str, Any]:
        props = self._cuda.call("cudaGetDeviceProperties", self._cuda.device_id)
        gpu = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {**super().describe(), "tensorrt": self._shared.trt.__version__, "gpu": gpu.rstrip("\x00")}

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self._cuda.call("cudaFree", ptr)
        self._buffers.clear()
        if self.stream is not None:
            self._cuda.call("cudaStreamDestroy", self.stream)
            self.stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA module may be gone already
            pass
