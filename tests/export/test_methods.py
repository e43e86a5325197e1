"""Every registered method: train a few steps on the bundled sample (the real engine, a real run directory),
export it with ``python -m export``, and verify through ``usseg_sdk.Segmenter`` on onnxruntime CPU.

Parametrized over ``available_methods()``, so a new method is covered when it registers. ``TINY`` holds the
small configs that keep this fast; a method without an entry runs with its defaults (and ``n_clusters: 4``).
Plus the checkpoint errors: a corrupted or mismatched checkpoint is a CheckpointError naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from export.__main__ import main as export_main
from tests.export.graph_checks import assert_plain
from tests.tiny_configs import TINY
from training.methods.base import available_methods, get_method_class

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "neu-seg"

SLOW: set[str] = set()  # methods too heavy for the default run even in their TINY config


def _registered() -> list:
    names = [n for n in available_methods() if get_method_class(n).__module__.startswith("training.methods")]
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _fit(name: str, run_dir: Path, images: Path) -> None:
    from training.engine import fit

    cls = get_method_class(name)
    overrides = {k: v for k, v in TINY.get(name, {}).items() if k in cls.config_class.__dataclass_fields__}
    config = {"method": name, "method_config": {"n_clusters": 4, **overrides},
              "data": {"train": {"kind": "folder", "root": str(images), "crop": 64, "channels": 1}, "eval": None},
              "train": {"epochs": 1, "batch_size": 4, "num_workers": 0, "device": "cpu", "seed": 0}}
    fit(config, run_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Eight sample frames: one epoch is two steps, and epoch hooks (PiCIE's k-means) run."""
    folder = tmp_path_factory.mktemp("frames")
    for path in sorted((SAMPLE / "images").iterdir())[:8]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.parametrize("name", _registered())
def test_train_export_verify(name, images, tmp_path, capsys):
    run = tmp_path / "run"
    _fit(name, run, images)
    code = export_main([str(run), "--verify-count", "3", "--scores"])  # dynamic, verified on the training frames
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads((run / "export" / "verify.json").read_text())
    assert report["passed"] and report["max_abs_diff_probs"] <= 1e-4 and report["label_agreement"] >= 0.999
    # A few steps can leave a method predicting one cluster everywhere (label agreement is then trivially 1);
    # the probabilities still vary, and they are what max_abs_diff_probs compares.
    assert report["reference_probs_std"] > 1e-3, "the reference probabilities are constant: the check is vacuous"
    meta = json.loads((run / "export" / "model.json").read_text())
    steps = 1 if get_method_class(name).gradient_free else 2  # a fitted method stops after one step
    assert meta["method"] == name and meta["training"]["steps"] == steps and meta["training"]["image_size"] == [64, 64]
    assert meta["training"]["n_images"] == 8 and meta["training"]["dataset"] == str(images)
    assert "exported" in out.out and "verified" in out.out
    assert_plain(onnx.load(str(run / "export" / "model.onnx")))  # AC: masked convs / attention made plain


@pytest.fixture(scope="module")
def trained_run(images, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("infoseg") / "run"
    _fit("infoseg", run, images)
    return run


def test_corrupted_checkpoint_is_a_clear_error(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    weights = run / "checkpoints" / "best" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert export_main([str(run / "checkpoints" / "best"), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "sha256" in err
    assert not (run / "export").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert export_main([str(tmp_path / "nowhere"), "--no-verify"]) == 2
    assert "no such run or checkpoint directory" in capsys.readouterr().err


def test_mismatched_checkpoint_is_a_clear_error(trained_run, tmp_path, capsys):
    from training.checkpoint import encode_files, open_checkpoint, write_checkpoint

    ckpt = open_checkpoint(trained_run / "checkpoints" / "best")
    state = json.loads(json.dumps(ckpt.state))
    state["config"]["method_config"]["n_clusters"] = 5  # the weights have 4 clusters
    target = tmp_path / "mismatched"
    write_checkpoint(target, encode_files(model_state=ckpt.tensors("model.safetensors"), optimizer_state=None,
                                          state=state))
    assert export_main([str(target), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "shapes do not match" in err


def test_engine_without_tensorrt_fails_fast_naming_the_extra(trained_run, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert export_main([str(trained_run), "--format", "onnx", "engine", "--out", str(tmp_path / "out")]) == 2
    assert "usseg-sdk[trt]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
