"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, one directory per checkpoint.

A checkpoint directory (``RUN/checkpoints/last``, ``RUN/checkpoints/best``) holds

    model.safetensors      the method's ``state_dict()`` (parameters and persistent buffers)
    optimizer.safetensors  every tensor of ``optimizer.state_dict()`` (Adam moments, step counters)
    optimizer.json         the rest of it: structure, param groups, scalars; tensors are ``{"$tensor": name}``
    state.json             config, method name, step/epoch/batch position, ``Method.extra_state()``, RNG states
                           of every rank (python, numpy, torch CPU and CUDA), GradScaler, eval metrics
    manifest.json          written last: size and sha256 of every file above

It is complete or absent: the files go to a temporary sibling directory, the manifest last, then the directory
replaces the old one by two renames (old -> ``.NAME.old``, new -> ``NAME``). A reader that finds ``NAME``
missing takes ``.NAME.old`` (the writer died between the renames). A directory whose manifest is missing or
does not match its files is not a checkpoint: :class:`~training.errors.CheckpointError` names the file.
Loading never executes code: ``safetensors`` and ``json`` only, no ``torch.load``.

A training run's ``state.json`` (the loop's :class:`LoopState`, the log window, RNGs, scaler) is written by
:func:`run_state` and loaded back on resume by :func:`restore_run`; :func:`load_method` is export's entry point.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import platform
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from training.errors import CheckpointError, ConfigError, UnknownMethodError
from training.metrics_log import StepWindow
from usseg_sdk.atomic import write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    from training.methods.base import Method

log = logging.getLogger(__name__)

FORMAT = "usseg-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_SKELETON = "optimizer.json"
STATE_FILE = "state.json"
CHECKPOINTS_DIR = "checkpoints"


# -- tensor trees: nested dicts/lists/tuples with tensors <-> (JSON skeleton, flat tensors) ---------------
def flatten_tree(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested structure into a JSON skeleton and a flat ``{name: tensor}`` dict.

    Tensors become ``{"$tensor": name}``, tuples ``{"$tuple": [...]}``, dicts with non-string keys (the
    optimizer's parameter ids) ``{"$dict": [[key, value], ...]}``.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous().clone()
            return {"$tensor": path}
        if isinstance(node, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in node):
                return {k: walk(v, f"{path}.{k}") for k, v in node.items()}
            return {"$dict": [[k, walk(v, f"{path}.{k}")] for k, v in node.items()]}
        if isinstance(node, tuple):
            return {"$tuple": [walk(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, bool | int | float | str):
            return node
        raise TypeError(f"{path}: cannot store a {type(node).__name__} in a checkpoint (tensors and JSON only)")

    return walk(tree, "root"), tensors


def unflatten_tree(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if set(skeleton) == {"$tensor"}:
            return tensors[skeleton["$tensor"]]
        if set(skeleton) == {"$tuple"}:
            return tuple(unflatten_tree(v, tensors) for v in skeleton["$tuple"])
        if set(skeleton) == {"$dict"}:
            return {k: unflatten_tree(v, tensors) for k, v in skeleton["$dict"]}
        return {k: unflatten_tree(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_tree(v, tensors) for v in skeleton]
    return skeleton


# -- RNG states as JSON ----------------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's python, numpy, torch CPU (and CUDA ``device``) RNG states, JSON-serialisable."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached)},
             "torch": _b64(torch.get_rng_state())}
    if device.type == "cuda":
        state["cuda"] = _b64(torch.cuda.get_rng_state(device))
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np.asarray(np_state["keys"], dtype=np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(_unb64(state["torch"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(_unb64(state["cuda"]), device)


# -- writing ---------------------------------------------------------------------------------------------
def encode_files(*, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any] | None,
                 state: dict[str, Any]) -> dict[str, bytes]:
    """The bytes of every file of a checkpoint (without the manifest)."""
    model_tensors = {}
    for key, value in model_state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{MODEL_FILE}: state_dict entry {key!r} is a {type(value).__name__}, not a "
                                  "tensor; keep non-tensor state in Method.extra_state()")
        model_tensors[key] = value.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
    files = {MODEL_FILE: save_safetensors(model_tensors)}
    if optimizer_state is not None:
        skeleton, tensors = flatten_tree(optimizer_state)
        files[OPTIMIZER_TENSORS] = save_safetensors(tensors)
        files[OPTIMIZER_SKELETON] = json.dumps(skeleton).encode("utf-8")
    try:
        files[STATE_FILE] = json.dumps(state, indent=1).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{STATE_FILE}: state is not JSON-serialisable ({e}); Method.extra_state() must "
                              "return plain JSON values") from e
    return files


def write_checkpoint(target: str | os.PathLike, files: dict[str, bytes]) -> Path:
    """Write ``files`` plus a manifest as directory ``target``, replacing any previous one atomically."""
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    old = parent / f".{target.name}.old"
    if not target.exists() and old.exists():  # a previous writer died between its two renames: recover first
        os.replace(old, target)
    for stale in parent.glob(f".{target.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        for name, data in files.items():
            write_bytes_atomic(tmp / name, data)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION,
                    "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                              for name, data in files.items()}}
        write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1))
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def _fsync_dir(folder: Path) -> None:
    try:  # not every filesystem lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- reading ---------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A verified checkpoint directory; files are read (and checked against the manifest) on demand."""

    path: Path
    manifest: dict[str, Any]
    _state: dict[str, Any] | None = field(default=None, repr=False)

    def read_bytes(self, name: str) -> bytes:
        entry = self.manifest["files"].get(name)
        file = self.path / name
        if entry is None:
            raise CheckpointError(f"{file}: not listed in {self.path / MANIFEST}")
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{file}: missing (listed in {MANIFEST}); the checkpoint is incomplete") from None
        except OSError as e:
            raise CheckpointError(f"{file}: cannot read: {e}") from e
        if len(data) != entry["bytes"]:
            raise CheckpointError(f"{file}: {len(data)} bytes, the manifest records {entry['bytes']} "
                                  "(truncated or overwritten)")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointError(f"{file}: sha256 does not match the manifest (corrupted)")
        return data

    def verify(self) -> Checkpoint:
        """Read every file the manifest lists and check its size and sha256 (a CheckpointError names the first bad
        one); returns ``self``."""
        for name in self.manifest["files"]:
            self.read_bytes(name)
        _ = self.state
        return self

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:
            self._state = _parse_state(self.read_bytes(STATE_FILE), self.path / STATE_FILE)
        return self._state

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        data = self.read_bytes(name)
        try:
            return load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{self.path / name}: not a valid safetensors file ({e})") from e

    def optimizer_state(self) -> dict[str, Any]:
        skeleton = _parse_json(self.read_bytes(OPTIMIZER_SKELETON), self.path / OPTIMIZER_SKELETON)
        tensors = self.tensors(OPTIMIZER_TENSORS)
        try:
            return unflatten_tree(skeleton, tensors)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{self.path / OPTIMIZER_SKELETON}: does not match {OPTIMIZER_TENSORS} "
                                  f"(missing tensor {e})") from e


_STATE_FIELDS = ("method", "config", "step", "epoch")


def _parse_json(data: bytes, file: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from e


def _parse_state(data: bytes, file: Path) -> dict[str, Any]:
    state = _parse_json(data, file)
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    missing = [k for k in _STATE_FIELDS if k not in state]
    if missing:
        raise CheckpointError(f"{file}: missing field(s) {missing}")
    if state.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(f"{file}: written by a newer usseg (format {state['format_version']}); upgrade")
    return state


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint directory and check its manifest (files are verified when read)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise CheckpointError(f"{manifest_file}: missing; {path} is not a complete checkpoint (its writer was "
                              "interrupted, or it is not a checkpoint directory)")
    manifest = _parse_json(manifest_file.read_bytes(), manifest_file)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(
            manifest.get("files"), dict):
        raise CheckpointError(f"{manifest_file}: not a {FORMAT} manifest")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{manifest_file}: checkpoint format {manifest['version']} is newer than this "
                              f"usseg reads ({FORMAT_VERSION}); upgrade")
    for name in (MODEL_FILE, STATE_FILE):
        if name not in manifest["files"]:
            raise CheckpointError(f"{manifest_file}: lists no {name}")
    return Checkpoint(path=path, manifest=manifest)


def checkpoint_dir(run_dir: str | os.PathLike, name: str) -> Path | None:
    """``RUN/checkpoints/NAME`` if it holds a manifest, else the ``.NAME.old`` a crashed swap left, else None."""
    base = Path(run_dir) / CHECKPOINTS_DIR
    for candidate in (base / name, base / f".{name}.old"):
        if (candidate / MANIFEST).is_file():
            return candidate
    return None


def find_checkpoint(path: str | os.PathLike, prefer: str = "best") -> Checkpoint:
    """A checkpoint directory, or a run directory (its ``prefer`` checkpoint, falling back to the other)."""
    path = Path(path)
    if (path / MANIFEST).exists() or (path / STATE_FILE).exists() or (path / MODEL_FILE).exists():
        return open_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run or checkpoint directory")
    order = [prefer] + [n for n in ("best", "last") if n != prefer]
    for name in order:
        found = checkpoint_dir(path, name)
        if found is not None:
            return open_checkpoint(found)
    raise CheckpointError(f"{path}: no complete checkpoint (looked for {CHECKPOINTS_DIR}/{'/, '.join(order)}/ "
                          f"with a {MANIFEST})")


# -- the method ------------------------------------------------------------------------------------------
def load_model_state(method: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Load ``model.safetensors`` into ``method``; keys and shapes must match exactly."""
    file = ckpt.path / MODEL_FILE
    tensors = ckpt.tensors(MODEL_FILE)
    expected = method.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{file}: keys do not match the method {getattr(method, 'name', '')!r}: "
                              f"missing {_few(missing)}, unexpected {_few(unexpected)}")
    wrong = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs method {tuple(v.shape)}"
             for k, v in expected.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{file}: shapes do not match the method: {'; '.join(wrong[:5])}"
                              + (f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else ""))
    method.load_state_dict(tensors, strict=True)


def _few(keys: list[str], n: int = 5) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def build_method_from_state(ckpt: Checkpoint) -> Any:
    """The method named in ``state.json``, built from its saved config (not yet loaded with weights)."""
    from training.methods.base import build_method

    state = ckpt.state
    file = ckpt.path / STATE_FILE
    method_config = (state["config"] or {}).get("method_config", {})
    try:
        return build_method(state["method"], method_config)
    except UnknownMethodError as e:
        raise CheckpointError(f"{file}: {e} (import the module that registers it, e.g. with --plugin)") from e
    except ConfigError as e:
        raise CheckpointError(f"{file}: the saved method_config does not fit method {state['method']!r}: {e}") from e


@dataclass
class RunInfo:
    """What :func:`load_method` knows about the run the checkpoint came from."""

    method: str
    config: dict[str, Any]  # the resolved run config (method, method_config, data, train)
    step: int
    epoch: int
    metrics: dict[str, Any]  # state.json's metrics: eval, eval_step, best_step, best_metric, best_value, ...
    checkpoint_dir: Path
    run_dir: Path | None
    elapsed_s: float
    world_size: int


def load_method(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                prefer: str = "best") -> tuple[Any, RunInfo]:
    """Load a trained method from a run directory (its ``best`` checkpoint, else ``last``) or a checkpoint dir.

    Returns the method in eval mode on ``device`` and its :class:`RunInfo`. Every problem with the files is a
    :class:`~training.errors.CheckpointError` naming the file.
    """
    ckpt = find_checkpoint(path, prefer=prefer)
    method = build_method_from_state(ckpt)
    load_model_state(method, ckpt)
    try:
        method.load_extra_state(ckpt.state.get("extra_state") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path / STATE_FILE}: extra_state does not fit the method: {e}") from e
    method.to(device).eval()
    return method, run_info(ckpt)


def describe_checkpoint(ckpt: Checkpoint) -> str:
    """One line for a person: which checkpoint, its step, and why it is the one, e.g. ``runs/a/checkpoints/best
    (step 400, epoch 3): best over/miou 0.4123 (evaluation 4 of the run)``."""
    state, m = ckpt.state, ckpt.state.get("metrics") or {}
    head = f"{ckpt.path} (step {state['step']}, epoch {state['epoch']})"
    metric, evaluation = m.get("best_metric"), m.get("eval") or {}
    value = evaluation.get(metric) if metric and m.get("eval_step") == state["step"] else None
    at_best = m.get("best_step") == state["step"]
    if at_best and m.get("best_reason") == "final":
        return (f"{head}: the final weights; {metric} did not move over {m.get('n_evals')} evaluations, so it could "
                "not choose a best")
    if at_best and m.get("best_reason") == "no evaluation":
        return f"{head}: the final weights (no evaluation during training)"
    if at_best and value is not None:
        return f"{head}: best {metric} {value:.4f} (evaluation {m.get('n_evals')} of the run)"
    return head + (f": {metric} {value:.4f}" if value is not None else "")


def run_info(ckpt: Checkpoint) -> RunInfo:
    state = ckpt.state
    run_dir = ckpt.path.parent.parent if ckpt.path.parent.name == CHECKPOINTS_DIR else None
    return RunInfo(method=state["method"], config=state["config"], step=int(state["step"]),
                   epoch=int(state["epoch"]), metrics=dict(state.get("metrics") or {}), checkpoint_dir=ckpt.path,
                   run_dir=run_dir, elapsed_s=float(state.get("elapsed_s", 0.0)),
                   world_size=int(state.get("world_size", 1)))


# -- a training run: what a checkpoint saves of the loop and what resume restores ------------------------
@dataclass
class LoopState:
    """The loop's position and scores, saved in ``state.json`` and restored on resume."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current epoch (epochs completed)
    batch_in_epoch: int = 0  # global batches of the current epoch already trained on
    best_miou: float | None = None  # main-head mIoU of the evaluation that made ``best``
    best_step: int | None = None  # step of the weights in checkpoints/best
    last_eval: dict[str, Any] | None = None
    last_eval_step: int | None = None
    best_metric: str | None = None  # the criterion best is chosen by (train.best_metric, resolved)
    best_value: float | None = None  # its highest value so far
    metric_range: list[float] | None = None  # [lowest, highest] value of the criterion over the evaluations
    n_evals: int = 0
    best_reason: str | None = None  # "best_metric" | "final" (the criterion never moved) | "no evaluation"

    def metrics(self) -> dict[str, Any]:
        """What ``state.json`` holds under ``metrics``."""
        return {"eval": self.last_eval, "eval_step": self.last_eval_step, "best_miou": self.best_miou,
                "best_step": self.best_step, "best_metric": self.best_metric, "best_value": self.best_value,
                "metric_range": self.metric_range, "n_evals": self.n_evals, "best_reason": self.best_reason}

    @classmethod
    def from_state(cls, state: dict[str, Any], batch_in_epoch: int) -> LoopState:
        m = state.get("metrics") or {}
        return cls(step=int(state["step"]), epoch=int(state["epoch"]), batch_in_epoch=batch_in_epoch,
                   best_miou=m.get("best_miou"), best_step=m.get("best_step"), last_eval=m.get("eval"),
                   last_eval_step=m.get("eval_step"), best_metric=m.get("best_metric"),
                   best_value=m.get("best_value"), metric_range=m.get("metric_range"),
                   n_evals=int(m.get("n_evals") or 0), best_reason=m.get("best_reason"))


@dataclass
class Resumed:
    """What a resumed run takes from its checkpoint besides the weights, optimiser and scaler state it loaded."""

    checkpoint: Checkpoint
    loop: LoopState
    elapsed_s: float  # training time of the run so far
    log_lines: int  # metrics.jsonl lines when the checkpoint was written
    window: StepWindow  # the step values not yet written to metrics.jsonl
    rng: dict[str, Any] | None  # this rank's RNG states, restored after on_fit_start


def resume_checkpoint(run_dir: Path, *, warn: bool = True) -> Checkpoint:
    """``RUN/checkpoints/last``, verified; when it is missing or damaged, ``best`` (a WARNING names both: the run
    continues from the best step, the steps after it are trained again); else a CheckpointError saying there is
    nothing to resume and why."""
    problems = []
    for name in ("last", "best"):
        found = checkpoint_dir(run_dir, name)
        if found is None:
            problems.append(f"{run_dir / CHECKPOINTS_DIR / name} is missing or incomplete")
            continue
        try:
            ckpt = open_checkpoint(found).verify()
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if name == "best" and warn:
            log.warning("cannot resume from %s: %s; resuming from %s (step %d) instead", run_dir / CHECKPOINTS_DIR /
                        "last", problems[0], found, int(ckpt.state["step"]))
        return ckpt
    raise CheckpointError(f"{run_dir}: no complete checkpoint to resume from ({'; '.join(problems)})")


def refuse_used_run_dir(run_dir: Path) -> None:
    """A fresh run must not overwrite another run's checkpoints."""
    if any(checkpoint_dir(run_dir, n) for n in ("last", "best")):
        raise ConfigError(f"{run_dir} already holds checkpoints: resume it (--resume {run_dir}) "
                          "or choose another --out")


def run_state(*, config: dict[str, Any], loop: LoopState, elapsed_s: float, steps_per_epoch: int,
              batch_size: int, world_size: int, extra_state: dict[str, Any], rngs: list[dict[str, Any]],
              scaler: dict[str, Any] | None, log_lines: int, window: StepWindow) -> dict[str, Any]:
    """The ``state.json`` of a training checkpoint (``config`` is the resolved config as plain data)."""
    return {
        "format_version": FORMAT_VERSION,
        "method": config["method"],
        "config": config,
        "step": loop.step,
        "epoch": loop.epoch,
        "batch_in_epoch": loop.batch_in_epoch,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "world_size": world_size,
        "elapsed_s": elapsed_s,
        "metrics": loop.metrics(),
        "extra_state": extra_state,
        "rng": rngs,
        "scaler": scaler,
        "log": {"lines": log_lines, "window": window.sums, "window_steps": window.steps},
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def restore_run(ckpt: Checkpoint, *, config: dict[str, Any], method: Method,
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch_size: int, rank: int,
                world_size: int) -> Resumed:
    """Load ``ckpt`` into the run's method, optimiser and scaler; return the rest of what the run resumes with.

    ``config`` (the resolved config as plain data) may differ from the saved one; every changed key is logged.
    """
    state = ckpt.state
    if state["method"] != config["method"]:
        raise CheckpointError(f"{ckpt.path / STATE_FILE}: the checkpoint is of method {state['method']!r}, the "
                              f"config asks for {config['method']!r}")
    for key, (old, new) in _diff(state["config"], config).items():
        log.warning("config changed on resume: %s: %r -> %r", key, old, new)
    load_model_state(method, ckpt)
    method.load_extra_state(state.get("extra_state") or {})
    try:
        optimizer.load_state_dict(ckpt.optimizer_state())
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt.path / OPTIMIZER_SKELETON}: does not fit the method's optimizer: {e}") from e
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    loop = LoopState.from_state(state, _batch_position(state, batch_size, world_size))
    log_state = state.get("log") or {}
    return Resumed(checkpoint=ckpt, loop=loop, elapsed_s=float(state.get("elapsed_s", 0.0)),
                   log_lines=int(log_state.get("lines", 0)),
                   window=StepWindow(dict(log_state.get("window") or {}), int(log_state.get("window_steps", 0))),
                   rng=_rng_of_rank(state.get("rng") or [], ckpt, rank, world_size))


def _batch_position(state: dict[str, Any], batch_size: int, world_size: int) -> int:
    saved_global = int(state.get("batch_size", batch_size)) * int(state.get("world_size", 1))
    global_batch = batch_size * world_size
    position = int(state.get("batch_in_epoch", 0))
    if saved_global != global_batch:
        log.warning("global batch changed on resume (%d -> %d images): the run continues at the nearest "
                    "batch and will not repeat the uninterrupted one exactly", saved_global, global_batch)
        position = position * saved_global // global_batch
    return position


def _rng_of_rank(rngs: list[dict[str, Any]], ckpt: Checkpoint, rank: int, world_size: int) -> dict[str, Any] | None:
    if not rngs:
        log.warning("%s has no RNG state: randomness will differ from the uninterrupted run", ckpt.path)
        return None
    if len(rngs) != world_size:
        log.warning("checkpoint written by %d processes, resumed by %d: every rank takes RNG state %d",
                    len(rngs), world_size, 0)
        return rngs[0]
    return rngs[rank]


def _diff(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = {}
        for key in sorted(set(old) | set(new)):
            out.update(_diff(old.get(key), new.get(key), f"{prefix}{key}."))
        return out
    return {} if old == new else {prefix.rstrip("."): (old, new)}
