"""What this machine can run — onnxruntime providers, the cpu/gpu wheel conflict, CUDA, TensorRT.

Never imports torch. GPU facts come from ``nvidia-smi`` when it is on the PATH and from cuda-python / TensorRT
when they are installed. The command is ``usseg doctor`` (:mod:`usseg_sdk.cli.doctor`): exit status 1 when a
problem was found (e.g. both onnxruntime wheels installed).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import shutil
import subprocess
import sys
from typing import Any

from usseg_sdk import __version__
from usseg_sdk.backends import ort as ort_backend


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
    if not dists:
        report["problems"].append("onnxruntime is not installed: pip install 'usseg-sdk[cpu]' or 'usseg-sdk[gpu]'")
    if report["cuda"].get("gpus") and "CUDAExecutionProvider" not in report["onnxruntime"].get("providers", []):
        report["problems"].append("an NVIDIA GPU is present but onnxruntime has no CUDA provider: "
                                  "pip install 'usseg-sdk[gpu]' (and uninstall the CPU-only onnxruntime)")
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
