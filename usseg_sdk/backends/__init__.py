"""Inference backends, registered by name and imported only when a model is opened.

``onnxruntime`` (``backends/ort.py``: CPU, CUDA and TensorRT execution providers) runs ``.onnx`` files;
``tensorrt`` (``backends/tensorrt.py``) runs serialised ``.engine`` / ``.plan`` files natively. A third backend
is one file with a :class:`~usseg_sdk.backends.base.Backend` subclass and one :func:`register_backend` line (here,
or in the line's own code): its name, the model files it runs, the devices it serves and its priority. Selection
(:func:`open_backend`) reads only the registry:

* ``SegmenterConfig.backend`` (``--backend``, ``USSEG_BACKEND``) names one: it is used, or the error says why not
  (unknown name, a model file it does not run, a device it does not serve). ``providers`` imply onnxruntime.
* Otherwise the backends that run one of the model files on ``config.device`` are tried by priority, highest
  first. An explicit device takes the first and raises its error; ``device="auto"`` falls back to the next with a
  WARNING naming both.

With the two built-in backends this gives:

===========  ===========================================  ==============================================
device       ``.onnx``                                    ``.engine`` (or an export dir holding one)
===========  ===========================================  ==============================================
cpu          onnxruntime CPU                              error (engines need a GPU; use the .onnx)
cuda         onnxruntime CUDA (error if unavailable)      native TensorRT
tensorrt     onnxruntime TensorRT EP                      native TensorRT
auto         CUDA if available, else CPU (INFO log)       native TensorRT, else the .onnx with a WARNING
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

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

__all__ = ["Backend", "BackendSpec", "ModelFiles", "TensorInfo", "available_backends", "find_model_files",
           "get_backend", "open_backend", "register_backend"]


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend: what it runs, where, and how eagerly it is chosen."""

    name: str
    target: str  # "package.module:ClassName", imported on first use
    suffixes: tuple[str, ...]  # model files it runs
    devices: tuple[str, ...]  # SegmenterConfig.device values it serves
    priority: int = 0  # higher is tried first when several backends could run a model
    kind: str = "model"  # what its files are, for messages ("TensorRT engine")
    hardware: str = ""  # where it runs, for messages ("an NVIDIA GPU"); default: its devices


_BACKENDS: dict[str, BackendSpec] = {}


def register_backend(name: str, target: str, *, suffixes: tuple[str, ...] = (".onnx",),
                     devices: tuple[str, ...] = DEVICES, priority: int = 0, kind: str = "model",
                     hardware: str = "") -> None:
    """Register ``"package.module:ClassName"`` under ``name``; the module is imported on first use.

    The class is constructed as ``cls(model_path, device, config)`` and raises BackendUnavailableError when its
    library or device is missing (``device="auto"`` then tries the next backend).

    Example:
        >>> register_backend("openvino", "my_line.openvino_backend:OpenVINOBackend", devices=("cpu", "auto"),
        ...                  priority=5)  # doctest: +SKIP
    """
    bad = [d for d in devices if d not in DEVICES]
    if bad:
        raise ValueError(f"backend {name!r}: devices must be among {DEVICES}, got {bad}")
    _BACKENDS[name] = BackendSpec(name, target, tuple(s.lower() for s in suffixes), tuple(devices), priority, kind,
                                  hardware)


register_backend("onnxruntime", "usseg_sdk.backends.ort:OnnxRuntimeBackend", suffixes=(".onnx",), priority=10,
                 kind="ONNX model")
register_backend("tensorrt", "usseg_sdk.backends.tensorrt:TensorRTBackend", suffixes=ENGINE_SUFFIXES,
                 devices=("auto", "cuda", "tensorrt"), priority=20, kind="TensorRT engine", hardware="an NVIDIA GPU")


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> type[Backend]:
    if name not in _BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; registered: {available_backends()}")
    module, _, cls = _BACKENDS[name].target.partition(":")
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
    """Open the backend for ``config`` (see the module docstring: by name, else by priority for the device)."""
    device = config.device
    name = config.backend or ("onnxruntime" if config.providers is not None else None)  # providers: onnxruntime's
    candidates = _candidates(files, device, name)
    for i, (spec, path) in enumerate(candidates):
        try:
            return get_backend(spec.name)(path, device, config)
        except BackendUnavailableError as e:
            if device != "auto" or i + 1 == len(candidates):
                raise
            nxt, nxt_path = candidates[i + 1]
            log.warning("device='auto': cannot run the %s %s with %s (%s); falling back to %s with %s", spec.kind,
                        path, spec.name, e, nxt_path, nxt.name)
    raise AssertionError("unreachable: _candidates never returns an empty list")


def _candidates(files: ModelFiles, device: str, name: str | None) -> list[tuple[BackendSpec, Path]]:
    """(backend, model file) pairs that could run on ``device``, best first; BackendUnavailableError when none."""
    paths = [p for p in (files.engine, files.onnx) if p is not None]
    if name is not None and name not in _BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; registered: {available_backends()}")
    specs = [_BACKENDS[name]] if name is not None else sorted(_BACKENDS.values(), key=lambda s: -s.priority)
    found = [(s, p) for s in specs for p in paths if p.suffix.lower() in s.suffixes and device in s.devices]
    if not found:
        raise _no_backend(paths, device, name)
    return found


def _no_backend(paths: list[Path], device: str, name: str | None) -> BackendUnavailableError:
    if name is not None:
        spec = _BACKENDS[name]
        if not any(p.suffix.lower() in spec.suffixes for p in paths):
            return BackendUnavailableError(f"backend {name!r} runs {'/'.join(spec.suffixes)} files; the model is "
                                           f"{' + '.join(str(p) for p in paths)}")
        return BackendUnavailableError(f"backend {name!r} does not run on device {device!r} (it serves "
                                       f"{', '.join(spec.devices)})")
    path = paths[0]
    owners = [s for s in _BACKENDS.values() if path.suffix.lower() in s.suffixes]
    what = "; ".join(f"a {s.kind}, which runs only on {s.hardware or 'devices ' + ', '.join(s.devices)} "
                     f"(backend {s.name})" for s in owners) or "a file no registered backend runs"
    usable = sorted({x for s in _BACKENDS.values() if device in s.devices for x in s.suffixes})
    return BackendUnavailableError(f"{path} is {what}; on device {device!r} load a {'/'.join(usable)} model "
                                   "instead (an export folder holds model.onnx)")
