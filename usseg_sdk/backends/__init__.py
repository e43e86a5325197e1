"""Inference backends, registered by name and imported only when a model is opened.

``onnxruntime`` (``backends/ort.py``: CPU, CUDA and TensorRT execution providers) runs ``.onnx`` files;
``tensorrt`` (``backends/tensorrt.py``) runs serialised ``.engine`` / ``.plan`` files natively. A third backend
is one file with a :class:`~usseg_sdk.backends.base.Backend` subclass and one ``register_backend`` line.

Device choice (:func:`open_backend`):

===========  ===========================================  ==============================================
device       ``.onnx``                                    ``.engine`` (or an export dir holding one)
===========  ===========================================  ==============================================
cpu          onnxruntime CPU                              error (engines need a GPU; use the .onnx)
cuda         onnxruntime CUDA (error if unavailable)      native TensorRT
tensorrt     onnxruntime TensorRT EP                      native TensorRT
auto         CUDA if available, else CPU with a WARNING   native TensorRT, else the .onnx with a WARNING
===========  ===========================================  ==============================================
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from usseg_sdk.backends.base import Backend, TensorInfo
from usseg_sdk.config import SegmenterConfig
from usseg_sdk.errors import BackendUnavailableError, ModelLoadError

log = logging.getLogger(__name__)

_BACKENDS: dict[str, str] = {
    "onnxruntime": "usseg_sdk.backends.ort:OnnxRuntimeBackend",
    "tensorrt": "usseg_sdk.backends.tensorrt:TensorRTBackend",
}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

__all__ = ["Backend", "ModelFiles", "TensorInfo", "available_backends", "find_model_files", "get_backend",
           "open_backend", "register_backend"]


def register_backend(name: str, target: str) -> None:
    """Register ``"package.module:ClassName"`` under ``name``; the module is imported on first use."""
    _BACKENDS[name] = target


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> type[Backend]:
    if name not in _BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; registered: {available_backends()}")
    module, _, cls = _BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


@dataclass(frozen=True)
class ModelFiles:
    """The model files a Segmenter was pointed at: an ONNX graph, a TensorRT engine, or both (export dir)."""

    onnx: Path | None = None
    engine: Path | None = None

    @property
    def primary(self) -> Path:
        path = self.engine or self.onnx
        assert path is not None
        return path


def find_model_files(model: str | Path) -> ModelFiles:
    """Resolve a ``.onnx``, an ``.engine``/``.plan``, or an export directory; ModelLoadError when nothing fits."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model {path} does not exist")
    if path.is_file():
        if path.suffix.lower() in ENGINE_SUFFIXES:
            return ModelFiles(engine=path)
        return ModelFiles(onnx=path)
    onnx = _pick(path, ("model.onnx",), (".onnx",))
    engine = _pick(path, ("model.engine", "model.plan"), ENGINE_SUFFIXES)
    if onnx is None and engine is None:
        contents = sorted(p.name for p in path.iterdir())[:20]
        raise ModelLoadError(f"export directory {path} holds no model.onnx or model.engine (found: {contents})")
    return ModelFiles(onnx=onnx, engine=engine)


def _pick(folder: Path, names: tuple[str, ...], suffixes: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if len(found) > 1:
        raise ModelLoadError(f"export directory {folder} holds several models {[p.name for p in found]}; "
                             f"name one, or call it {names[0]}")
    return found[0] if found else None


def open_backend(files: ModelFiles, config: SegmenterConfig) -> Backend:
    """Open the backend for ``config.device`` (see the table in the module docstring)."""
    device = config.device
    if config.providers is not None or files.engine is None or device == "cpu":
        if files.onnx is None:
            raise BackendUnavailableError(f"{files.engine} is a TensorRT engine, which runs only on an NVIDIA GPU "
                                          f"(device={device!r}, providers={config.providers}); load the .onnx")
        return get_backend("onnxruntime")(files.onnx, device, config)
    try:
        return get_backend("tensorrt")(files.engine, device, config)
    except BackendUnavailableError as e:
        if device != "auto" or files.onnx is None:
            raise
        log.warning("device='auto': cannot run the TensorRT engine %s (%s); falling back to %s with onnxruntime",
                    files.engine, e, files.onnx)
        return get_backend("onnxruntime")(files.onnx, device, config)
