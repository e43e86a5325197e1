"""Shared test fixtures and the marker policy: slow/gpu/trt tests skip, with a reason, where they cannot run."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = ROOT / "tests" / "data" / "parity"
SAMPLE_DIR = ROOT / "samples" / "neu-seg"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow") or os.environ.get("USSEG_RUN_SLOW") == "1"
    needs_gpu = any("gpu" in it.keywords or "trt" in it.keywords for it in items)
    has_cuda = _cuda_available() if needs_gpu else False
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: run with --run-slow or USSEG_RUN_SLOW=1"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False here"))
        if "trt" in item.keywords and not (has_trt and has_cuda):
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (pip install 'usseg-sdk[trt]') and a CUDA GPU"))


@pytest.fixture(scope="session")
def parity():
    """Load a parity fixture by name: ``parity("iic_seg_loss_basic")`` -> dict of numpy arrays."""

    def load(name: str) -> dict[str, np.ndarray]:
        with np.load(PARITY_DIR / f"{name}.npz") as data:
            return {k: data[k] for k in data.files}

    return load


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The bundled NEU-Seg sample (images/ and masks/)."""
    return SAMPLE_DIR
