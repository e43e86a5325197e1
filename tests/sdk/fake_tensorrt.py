"""A stand-in for ``tensorrt`` and ``cuda.bindings.runtime`` so the native TensorRT backend's logic runs on CPU.

Only the calls the backend makes exist, with TensorRT 10's names and cuda-python's ``(err, value)`` returns.
"Device memory" is host memory from ctypes, so copies are real ``memmove`` s between real addresses. An engine
file is ``FAKEENGINE`` + the path of an ONNX model, which the fake execution context runs with onnxruntime.
This checks the backend's bookkeeping (shapes, addresses, copies, clones, profiles), not TensorRT itself; the
real thing is covered by the ``trt``-marked tests on a GPU machine.
"""

from __future__ import annotations

import ctypes
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort

MAGIC = b"FAKEENGINE"


def write_engine(path: Path, onnx_path: Path) -> Path:
    path.write_bytes(MAGIC + str(onnx_path).encode())
    return path


class _Enum:
    def __init__(self, **values: int) -> None:
        self.__dict__.update(values)


def make_cudart() -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = _Enum(cudaSuccess=0)
    rt.cudaMemcpyKind = _Enum(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.allocations = {}
    rt.calls = []

    def malloc(n: int):
        buf = ctypes.create_string_buffer(n)
        rt.allocations[ctypes.addressof(buf)] = buf
        return (0, ctypes.addressof(buf))

    def memcpy(dst: int, src: int, n: int, kind: int, stream: int):
        rt.calls.append(kind)
        ctypes.memmove(dst, src, n)
        return (0,)

    def free(ptr: int):
        rt.allocations.pop(ptr)
        return (0,)

    rt.cudaMalloc = malloc
    rt.cudaFree = free
    rt.cudaMemcpyAsync = memcpy
    rt.cudaStreamCreate = lambda: (0, 1)
    rt.cudaStreamSynchronize = lambda s: (0,)
    rt.cudaStreamDestroy = lambda s: (0,)
    rt.cudaSetDevice = lambda i: (0,)
    rt.cudaGetDeviceProperties = lambda i: (0, types.SimpleNamespace(name=b"Fake GPU\x00"))
    return rt


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if any(not lo <= s <= hi for s, lo, hi in zip(shape, self.engine.min_shape, self.engine.max_shape,
                                                       strict=True)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        b, _, h, w = self.shapes["image"]
        return (b, self.engine.n_classes, h, w) if name == "scores" else (b, h, w)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        shape = self.shapes["image"]
        n = int(np.prod(shape))
        image = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(self.addresses["image"])).reshape(shape)
        names = [o.name for o in self.engine.session.get_outputs()]
        for name, value in zip(names, self.engine.session.run(names, {"image": image.copy()}), strict=True):
            value = np.ascontiguousarray(value)
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        return True


class _Engine:
    def __init__(self, onnx_path: str, max_hw: tuple[int, int]) -> None:
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.names = ["image"] + [o.name for o in self.session.get_outputs()]
        c = self.session.get_inputs()[0].shape[1]
        self.max_shape = (8, c, *max_hw)
        self.min_shape = (1, c, 8, 8)
        self.channels = c
        scores = [o for o in self.session.get_outputs() if o.name == "scores"]
        self.n_classes = scores[0].shape[1] if scores and isinstance(scores[0].shape[1], int) else 3

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name == "image" else "output"

    def get_tensor_dtype(self, name: str) -> type:
        return np.float32 if name == "scores" else np.uint8

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == "image":
            return (-1, self.channels, -1, -1)
        return (-1, -1, -1, -1) if name == "scores" else (-1, -1, -1)

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        return (self.min_shape, (1, self.channels, 64, 64), self.max_shape)

    def create_execution_context(self) -> _Context:
        return _Context(self)


def make_tensorrt(max_hw: tuple[int, int] = (64, 64), version: str = "10.9.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    trt.TensorIOMode = _Enum(INPUT="input", OUTPUT="output")
    trt.nptype = lambda t: t
    trt.init_libnvinfer_plugins = lambda logger, namespace: True

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
            if not data.startswith(MAGIC):
                return None
            return _Engine(data[len(MAGIC):].decode(), max_hw)

    trt.Runtime = Runtime
    return trt
