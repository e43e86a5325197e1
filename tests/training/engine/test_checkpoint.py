import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

import tests.training.engine.toy_methods  # noqa: F401  (registers toy_seg)
from training import checkpoint as ck
from training.config import resolve_config
from training.errors import CheckpointError
from training.methods.base import build_method

CONFIG = resolve_config({"method": "toy_seg", "method_config": {"n_clusters": 3, "over_clusters": 5},
                         "data": {"train": {"kind": "folder", "root": "x"}}})


def _trained_method_and_optimizer():
    torch.manual_seed(0)
    method = build_method("toy_seg", CONFIG["method_config"])
    method.epochs_started = 7
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-2, betas=(0.8, 0.9))
    method.trunk[0].weight.sum().backward()
    optimizer.step()
    return method, optimizer


def _write(target, method, optimizer, **state_changes):
    state = {"format_version": 1, "method": "toy_seg", "config": CONFIG, "step": 12, "epoch": 3,
             "metrics": {"best_miou": 0.5, "best_step": 9, "eval": None}, "extra_state": method.extra_state(),
             **state_changes}
    files = ck.encode_files(model_state=method.state_dict(), optimizer_state=optimizer.state_dict(), state=state)
    return ck.write_checkpoint(target, files)


def _rewrite_manifest(folder):
    """Simulate a writer bug: files that are intact per the manifest but wrong in content."""
    import hashlib

    manifest = json.loads((folder / ck.MANIFEST).read_text())
    for name in manifest["files"]:
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / ck.MANIFEST).write_text(json.dumps(manifest))


def test_load_method_round_trip_from_run_and_checkpoint_dir(tmp_path):
    method, optimizer = _trained_method_and_optimizer()
    _write(tmp_path / "run" / "checkpoints" / "best", method, optimizer)
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "best"):
        loaded, info = ck.load_method(path)
        assert not loaded.training
        for key, value in method.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        assert loaded.epochs_started == 7  # extra_state
        assert (info.method, info.step, info.epoch, info.metrics["best_miou"]) == ("toy_seg", 12, 3, 0.5)
        assert info.config == CONFIG
        assert info.run_dir == tmp_path / "run"


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    method, optimizer = _trained_method_and_optimizer()
    folder = _write(tmp_path / "last", method, optimizer)
    fresh = torch.optim.Adam(method.parameters(), lr=1.0)
    fresh.load_state_dict(ck.open_checkpoint(folder).optimizer_state())
    original, restored = optimizer.state_dict(), fresh.state_dict()
    assert restored["param_groups"] == original["param_groups"]  # betas come back as a tuple, lr as saved
    assert isinstance(restored["param_groups"][0]["betas"], tuple)
    for pid, entry in original["state"].items():
        for key, value in entry.items():
            assert torch.equal(restored["state"][pid][key], value)
    assert b"pickle" not in (folder / ck.OPTIMIZER_SKELETON).read_bytes()


def test_flatten_tree_rejects_objects_that_are_not_json_or_tensors():
    with pytest.raises(TypeError, match=r"root\.x"):
        ck.flatten_tree({"x": object()})


def test_rng_states_round_trip():
    device = torch.device("cpu")
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = json.loads(json.dumps(ck.capture_rng(device)))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    ck.restore_rng(state, device)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_replacing_a_checkpoint_and_recovering_an_interrupted_swap(tmp_path):
    method, optimizer = _trained_method_and_optimizer()
    target = tmp_path / "checkpoints" / "last"
    _write(target, method, optimizer, step=1)
    _write(target, method, optimizer, step=2)
    assert ck.open_checkpoint(target).state["step"] == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]  # no temporary or old directories left
    target.rename(target.parent / ".last.old")  # the writer died between its two renames
    assert ck.checkpoint_dir(tmp_path, "last") == target.parent / ".last.old"
    _write(target, method, optimizer, step=3)
    assert ck.open_checkpoint(ck.checkpoint_dir(tmp_path, "last")).state["step"] == 3
    assert not (target.parent / ".last.old").exists()


def test_a_directory_without_manifest_is_not_a_checkpoint(tmp_path):
    method, optimizer = _trained_method_and_optimizer()
    target = _write(tmp_path / "run" / "checkpoints" / "last", method, optimizer)
    (target / ck.MANIFEST).unlink()
    assert ck.checkpoint_dir(tmp_path / "run", "last") is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ck.load_method(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"manifest.json: missing"):
        ck.load_method(target)


def _corrupt_truncated(folder):
    data = (folder / ck.MODEL_FILE).read_bytes()
    (folder / ck.MODEL_FILE).write_bytes(data[: len(data) // 2])


def _corrupt_garbage_with_matching_manifest(folder):
    (folder / ck.MODEL_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(40))
    _rewrite_manifest(folder)


def _corrupt_wrong_keys(folder):
    tensors = ck.open_checkpoint(folder).tensors(ck.MODEL_FILE)
    tensors["extra.weight"] = tensors.pop("heads.over.weight")
    (folder / ck.MODEL_FILE).write_bytes(save_safetensors(tensors))
    _rewrite_manifest(folder)


def _corrupt_wrong_shapes(folder):
    tensors = ck.open_checkpoint(folder).tensors(ck.MODEL_FILE)
    tensors["heads.main.weight"] = torch.zeros(7, 4, 1, 1)
    (folder / ck.MODEL_FILE).write_bytes(save_safetensors(tensors))
    _rewrite_manifest(folder)


def _corrupt_missing_state(folder):
    (folder / ck.STATE_FILE).unlink()


def _corrupt_unregistered_method(folder):
    state = json.loads((folder / ck.STATE_FILE).read_text())
    state["method"] = "no_such_method"
    (folder / ck.STATE_FILE).write_text(json.dumps(state))
    _rewrite_manifest(folder)


def _corrupt_flipped_byte(folder):
    data = bytearray((folder / ck.MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / ck.MODEL_FILE).write_bytes(bytes(data))


@pytest.mark.parametrize(("corrupt", "file", "problem"), [
    (_corrupt_truncated, ck.MODEL_FILE, "truncated"),
    (_corrupt_flipped_byte, ck.MODEL_FILE, "sha256 does not match"),
    (_corrupt_garbage_with_matching_manifest, ck.MODEL_FILE, "not a valid safetensors file"),
    (_corrupt_wrong_keys, ck.MODEL_FILE, r"missing heads.over.weight, unexpected extra.weight"),
    (_corrupt_wrong_shapes, ck.MODEL_FILE, r"heads.main.weight: checkpoint \(7, 4, 1, 1\) vs method \(3, 4, 1, 1\)"),
    (_corrupt_missing_state, ck.STATE_FILE, "missing"),
    (_corrupt_unregistered_method, ck.STATE_FILE, "unknown method 'no_such_method'"),
])
def test_bad_checkpoints_raise_checkpoint_error_naming_file_and_problem(tmp_path, corrupt, file, problem):
    method, optimizer = _trained_method_and_optimizer()
    folder = _write(tmp_path / "last", method, optimizer)
    corrupt(folder)
    with pytest.raises(CheckpointError, match=problem) as info:
        ck.load_method(folder)
    assert str(folder / file) in str(info.value)
