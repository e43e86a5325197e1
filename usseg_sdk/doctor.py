"""What this machine can run — each ``usseg`` command's needs, onnxruntime providers, the cpu/gpu wheel conflict,
CUDA, TensorRT.

Each command's optional modules are in :data:`COMMAND_NEEDS`; a module that cannot be imported is reported as
"usseg COMMAND would fail" with the pip line that installs it (a plain package name, which works however usseg-sdk
itself was installed: from a checkout, a wheel or an index). Never imports torch. GPU facts come from
``nvidia-smi`` when it is on the PATH and from cuda-python / TensorRT when they are installed. The command is
``usseg doctor`` (:mod:`usseg_sdk.cli.doctor`): exit status 1 when a problem was found (a command that would fail,
both onnxruntime wheels installed, ...).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from usseg_sdk import __version__
from usseg_sdk.backends import ort as ort_backend


@dataclass(frozen=True)
class Need:
    """Something a command imports: any one of ``modules`` will do."""

    modules: tuple[str, ...]
    purpose: str
    fix: str


BACKEND = Need(("onnxruntime", "tensorrt"), "running a model (onnxruntime for .onnx, tensorrt for engines)",
               "pip install onnxruntime  (onnxruntime-gpu instead on an NVIDIA GPU; never both)")
ONNX = Need(("onnx",), "writing a calibrated .onnx model", "pip install onnx")
# usseg_sdk's core requirements (numpy, opencv, pydantic, scipy) are not listed: without them no command starts.
COMMAND_NEEDS: dict[str, tuple[Need, ...]] = {
    "predict": (BACKEND,),
    "calibrate": (BACKEND, ONNX),
    "bench": (BACKEND,),
    "info": (BACKEND,),
    "doctor": (),
}


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a broken install failing inside its own import (e.g. a missing DLL)
        return False
    return True


def check_commands() -> dict[str, dict[str, Any]]:
    """Per command: ``ok`` and the ``missing`` needs (``module``, ``for``, ``fix``)."""
    importable: dict[str, bool] = {}
    result = {}
    for command, needs in COMMAND_NEEDS.items():
        missing = []
        for need in needs:
            found = [importable.setdefault(m, _importable(m)) for m in need.modules]
            if not any(found):
                missing.append({"module": " or ".join(need.modules), "for": need.purpose, "fix": need.fix})
        result[command] = {"ok": not missing, "missing": missing}
    return result


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Everything doctor reports, with a list of ``problems`` (empty when all is well)."""
    report: dict[str, Any] = {"usseg_sdk": __version__, "python": sys.version.split()[0],
                              "platform": platform.platform(), "problems": [], "notes": []}
    report["packages"] = {d: _version(d) for d in ("numpy", "opencv-python-headless", "opencv-python", "pydantic",
                                                   "scipy", "onnx", "tensorrt", "cuda-python")}
    dists = ort_backend.installed_distributions()
    report["onnxruntime_distributions"] = {d: _version(d) for d in dists}
    conflict = ort_backend.conflict_message(dists)
    if conflict:
        report["problems"].append(conflict)
    report["onnxruntime"] = _onnxruntime(report)
    report["cuda"] = _cuda()
    report["tensorrt"] = _tensorrt()
    report["commands"] = check_commands()
    for command, check in report["commands"].items():
        for need in check["missing"]:
            report["problems"].append(f"usseg {command} would fail: {need['module']} cannot be imported (needed for "
                                      f"{need['for']}); fix: {need['fix']}")
    if report["cuda"].get("gpus") and "CUDAExecutionProvider" not in report["onnxruntime"].get("providers", []):
        report["problems"].append("an NVIDIA GPU is present but onnxruntime has no CUDA provider: "
                                  "pip uninstall onnxruntime && pip install onnxruntime-gpu")
    return report


def _onnxruntime(report: dict[str, Any]) -> dict[str, Any]:
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError as e:
        return {"error": str(e)}
    info: dict[str, Any] = {"version": ort.__version__, "providers": ort.get_available_providers(),
                            "device": ort.get_device()}
    if "TensorrtExecutionProvider" in info["providers"] and _version("tensorrt") is None:
        report["notes"].append("onnxruntime lists the TensorRT provider, but the tensorrt package is not installed; "
                               "device='tensorrt' needs the TensorRT libraries (pip install 'usseg-sdk[trt]')")
    return info


def _cuda() -> dict[str, Any]:
    info: dict[str, Any] = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False)
            info["gpus"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError) as e:
            info["nvidia_smi_error"] = str(e)
    else:
        info["gpus"] = []
        info["note"] = "nvidia-smi not found (no NVIDIA driver, or not on PATH)"
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            rt = importlib.import_module(name)
        except ImportError:
            continue
        err, version = rt.cudaRuntimeGetVersion()
        ok = getattr(err, "value", err) == 0  # cuda-python returns (cudaError_t, value)
        info["cuda_runtime"] = f"{version // 1000}.{version % 1000 // 10}" if ok else f"error {err}"
        break
    return info


def _tensorrt() -> dict[str, Any]:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return {"installed": False, "hint": "pip install 'usseg-sdk[trt]' for .engine files"}
    return {"installed": True, "version": trt.__version__}
