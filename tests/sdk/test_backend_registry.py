"""Backend selection is driven by the registry: a backend registered here (no other file edited) is chosen by
name (``SegmenterConfig.backend``) and by its place in the ``device="auto"`` order, with a fallback on failure."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from usseg_sdk import BackendUnavailableError, Segmenter, SegmenterConfig, backends
from usseg_sdk.backends import register_backend
from usseg_sdk.backends.ort import OnnxRuntimeBackend

HERE = __name__


class FakeBackend(OnnxRuntimeBackend):
    """onnxruntime on the CPU under another name: enough to see which backend the selection picked."""

    name = "fake"

    def __init__(self, path, device, config):
        super().__init__(path, "cpu", config)


class BrokenBackend(FakeBackend):
    name = "broken"

    def __init__(self, path, device, config):
        raise BackendUnavailableError("the broken library is not installed")


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test."""
    monkeypatch.setattr(backends, "_BACKENDS", dict(backends._BACKENDS))


def test_a_registered_backend_is_selectable_by_name(models, registry):
    register_backend("fake", f"{HERE}:FakeBackend", suffixes=(".onnx",), devices=("cpu", "auto"))
    assert "fake" in backends.available_backends()
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu", backend="fake"))
    assert seg.backend.name == "fake"
    assert Segmenter(models["grey"], device="cpu").backend.name == "onnxruntime"  # by priority: ort's is higher
    assert seg.predict(np.zeros((6, 8), np.uint8)).labels.shape == (6, 8)


def test_auto_takes_the_registry_order_and_falls_back(models, registry, caplog):
    register_backend("fake", f"{HERE}:FakeBackend", suffixes=(".onnx",), devices=("cpu", "auto"), priority=50)
    assert Segmenter(models["grey"], device="auto").backend.name == "fake"
    register_backend("broken", f"{HERE}:BrokenBackend", suffixes=(".onnx",), devices=("cpu", "auto"), priority=90)
    with caplog.at_level(logging.WARNING, logger="usseg_sdk"):
        seg = Segmenter(models["grey"], device="auto")
    assert seg.backend.name == "fake"
    assert any("broken" in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)
    with pytest.raises(BackendUnavailableError, match="broken library"):  # an explicit device does not fall back
        Segmenter(models["grey"], device="cpu")


def test_selection_errors_name_the_choices(models, registry):
    with pytest.raises(BackendUnavailableError, match=r"unknown backend 'nope'.*onnxruntime.*tensorrt"):
        Segmenter(models["grey"], config=SegmenterConfig(device="cpu", backend="nope"))
    register_backend("engines_only", f"{HERE}:FakeBackend", suffixes=(".blob",), devices=("cpu",))
    with pytest.raises(BackendUnavailableError, match=r"engines_only.*\.blob"):
        Segmenter(models["grey"], config=SegmenterConfig(device="cpu", backend="engines_only"))
    register_backend("gpu_only", f"{HERE}:FakeBackend", suffixes=(".onnx",), devices=("cuda",))
    with pytest.raises(BackendUnavailableError, match=r"gpu_only.*device 'cpu'"):
        Segmenter(models["grey"], config=SegmenterConfig(device="cpu", backend="gpu_only"))


def test_backend_from_the_environment_and_the_flag():
    from usseg_sdk.cli import build_parser
    from usseg_sdk.config import config_from_args

    assert SegmenterConfig.from_env({"USSEG_BACKEND": "fake"}).backend == "fake"
    args = build_parser().parse_args(["predict", "src", "-m", "m", "-o", "o", "--backend", "fake"])
    assert config_from_args(args, environ={}).backend == "fake"
