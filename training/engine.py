"""The one training loop every method shares: devices, AMP, clipping, DDP, evaluation, checkpoints and resume.

The engine knows nothing about methods (timm's TrainingTask, minGPT's Trainer): it builds one with
``build_method``, feeds batches to ``training_step(batch, ctx)``, back-propagates ``out["loss"]``, steps the
optimiser ``configure_optimizer()`` returns, and calls the hooks. Per step::

    zero_grad -> training_step (under autocast) -> loss finite? (all ranks) -> backward (scaled for fp16)
    -> unscale -> after_backward -> clip -> lr schedule -> optimiser step -> on_step_end
    -> log window / periodic eval / periodic checkpoint -> stop? (max_steps, time budget, signal)

and per epoch ``on_epoch_start`` (``ctx.train_loader`` set) ... steps ... ``on_epoch_end`` -> eval every
``eval_every`` epochs -> ``checkpoints/last`` (and ``best`` when the eval mIoU improved).

A non-finite loss (like MAE's ``math.isfinite(loss)`` guard) or non-finite weights stop the run with
:class:`NonFiniteLossError` before anything is stepped or saved, so ``checkpoints/last`` keeps the last good
weights. A resumed run restores weights, optimiser, GradScaler, ``extra_state``, the RNG states of every rank
and the data position (see ``training/loaders.py``) and on CPU repeats the uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from training import checkpoint as ckpt_io
from training.config import RunConfig, TrainConfig, resolve_run_config, write_config
from training.distributed import (
    DistEnv,
    all_gather_objects,
    all_reduce_sum_,
    barrier,
    broadcast_object,
    differentiable_all_reduce_sum,
    init_distributed,
    shutdown_distributed,
)
from training.errors import CheckpointError, ConfigError, TrainingError
from training.evaluation import cluster_confusions, score_confusions
from training.loaders import eval_loader, seed_everything, train_loader
from training.methods.base import FitContext, Method, build_method
from training.metrics_log import MetricsLog
from training.plots import plot_curves

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class NonFiniteLossError(TrainingError):
    """The loss, the gradient norm or the weights became NaN/inf; the run stopped without saving them."""


@dataclass
class FitResult:
    run_dir: Path
    step: int
    epoch: int
    stopped: str  # completed | max_steps | time_budget | interrupted
    elapsed_s: float  # training wall-clock (evaluation and checkpoint writing excluded)
    best_miou: float | None = None
    best_step: int | None = None
    last_eval: dict[str, Any] | None = None


class Progress(Protocol):
    """What the engine reports to a progress display (the CLI's tqdm bar); only rank 0 reports."""

    def epoch_start(self, epoch: int, total_batches: int, done_batches: int) -> None: ...

    def step(self, values: dict[str, float]) -> None: ...

    def epoch_end(self) -> None: ...


@dataclass
class _Counters:
    """Everything about the loop's position that a checkpoint must restore."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current epoch (epochs completed)
    batch_in_epoch: int = 0  # global batches of the current epoch already trained on
    elapsed_s: float = 0.0  # training time of the run so far, across resumes
    best_miou: float | None = None
    best_step: int | None = None
    last_eval: dict[str, Any] | None = None
    last_eval_step: int | None = None
    window: dict[str, float] = field(default_factory=dict)  # sums of the step values since the last log line
    window_steps: int = 0


class _StepModule(nn.Module):
    """DDP wraps ``forward``; this forwards to ``training_step`` so DDP's reducer sees every step.

    The context is an attribute, not an argument: DDP would rebuild a dataclass argument on every call.
    """

    def __init__(self, method: Method):
        super().__init__()
        self.method = method
        self.ctx: FitContext | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return self.method.training_step(batch, self.ctx)


def fit(config: RunConfig | Mapping[str, Any], run_dir: str | os.PathLike, *, resume: bool = False,
        train_dataset: Dataset | None = None, eval_dataset: Dataset | None = None,
        progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> FitResult:
    """Train ``config``'s method, writing the run directory. See the module docstring and presets/README.md.

    ``config``: a :class:`~training.config.RunConfig` (``resolve_run_config``), or a config dict, resolved here
    once. ``resume``: continue from ``run_dir/checkpoints/last`` (``config`` may change engine keys such as
    ``train.epochs``; changed keys are logged). ``train_dataset``/``eval_dataset`` replace the ones
    ``config``'s ``data`` describes (library use, tests). ``should_stop`` is polled after every step (the CLI
    sets it from SIGTERM/SIGINT); the run then stops cleanly with a checkpoint.
    """
    run_config = config if isinstance(config, RunConfig) else resolve_run_config(config)
    trainer = _Trainer(run_config, Path(run_dir), resume=resume, train_dataset=train_dataset,
                       eval_dataset=eval_dataset, progress=progress, should_stop=should_stop)
    try:
        return trainer.run()
    finally:
        trainer.close()


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {spec!r} but CUDA is not available (use auto or cpu)")
    return torch.device(spec)


def lr_factor(step: int, cfg: TrainConfig, total_steps: int | None) -> float:
    """Multiplier of each param group's ``initial_lr`` for optimiser step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine" and total_steps:
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_datasets(config: RunConfig) -> tuple[Dataset, Dataset | None]:
    train = config.train_data.build()
    evaluation = config.eval_data.build() if config.eval_data is not None and config.eval_data.spec else None
    return train, evaluation


class _Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, *, resume: bool, train_dataset: Dataset | None,
                 eval_dataset: Dataset | None, progress: Progress | None, should_stop: Callable[[], bool] | None):
        self.config = config
        self.cfg = config.train
        self.should_stop = should_stop
        self._saved_flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                             torch.backends.cudnn.deterministic)
        device = select_device(self.cfg.device)
        self.env: DistEnv = init_distributed(device.type)
        try:
            self._setup(device, run_dir, resume, train_dataset, eval_dataset, progress)
        except BaseException:
            self.close()
            raise

    def _setup(self, device: torch.device, run_dir: Path, resume: bool, train_dataset: Dataset | None,
               eval_dataset: Dataset | None, progress: Progress | None) -> None:
        if self.env.enabled and device.type == "cuda":
            device = torch.device("cuda", self.env.local_rank)
        self.device = device
        self.progress = progress if self.env.is_main else None
        self.run_dir = Path(broadcast_object(str(run_dir), self.env))
        self.resume_from = self._find_resume_checkpoint() if resume else None
        if not resume:
            self._check_fresh_run_dir()
        self._setup_precision()
        seed_everything(self.cfg.seed)
        # a copy: the method owns its config object, the RunConfig stays as resolved (config.yaml, checkpoints)
        self.method = build_method(self.config.method, copy.deepcopy(self.config.method_config)).to(device)
        if self.cfg.sync_batchnorm and self.env.enabled:
            self._convert_sync_batchnorm()
        self.optimizer = self.method.configure_optimizer()
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp and self.amp_dtype == torch.float16)
        self._build_loaders(train_dataset, eval_dataset)
        self.c = _Counters()
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE, enabled=self.env.is_main)
        self._restored_rng: dict[str, Any] | None = None
        if self.resume_from is not None:
            self._load_checkpoint(self.resume_from)
        self.model: nn.Module = self._wrap_ddp()
        self.ctx = FitContext(device=device, epoch=self.c.epoch, step=self.c.step, train_loader=self.aux_loader,
                              rank=self.env.rank, world_size=self.env.world_size, amp=self.use_amp,
                              log=self._hook_log, epochs=self.cfg.epochs, steps_per_epoch=self.steps_per_epoch,
                              total_steps=self.total_steps, run_dir=self.run_dir,
                              all_reduce_sum=differentiable_all_reduce_sum if self.env.enabled else _identity)
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            self.model.module.ctx = self.ctx
        self._clock = time.monotonic()
        self._paused_s = 0.0
        self._elapsed_base = self.c.elapsed_s
        self._window_clock = (time.monotonic(), 0.0)
        self._last_saved_step = self.c.step if self.resume_from is not None else -1
        self._warned_main_matching = False

    # -- setup -----------------------------------------------------------------------------------------
    def _find_resume_checkpoint(self) -> ckpt_io.Checkpoint:
        found = ckpt_io.checkpoint_dir(self.run_dir, "last")
        if found is None:
            raise CheckpointError(f"{self.run_dir / ckpt_io.CHECKPOINTS_DIR / 'last'}: no complete checkpoint "
                                  "to resume from (the run stopped before its first checkpoint; start it again)")
        return ckpt_io.open_checkpoint(found)

    def _check_fresh_run_dir(self) -> None:
        if any(ckpt_io.checkpoint_dir(self.run_dir, n) for n in ("last", "best")):
            raise ConfigError(f"{self.run_dir} already holds checkpoints: resume it (--resume {self.run_dir}) "
                              "or choose another --out")

    def _setup_precision(self) -> None:
        cfg, device = self.cfg, self.device
        self.use_amp = cfg.amp and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        if self.use_amp and self.amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            log.warning("this GPU has no bfloat16: AMP falls back to float16 with loss scaling")
            self.amp_dtype = torch.float16
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)  # ops without a deterministic kernel warn
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _convert_sync_batchnorm(self) -> None:
        if self.device.type != "cuda":
            log.warning("train.sync_batchnorm needs CUDA; BatchNorm stays per process")
            return
        self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)

    def _build_loaders(self, train_dataset: Dataset | None, eval_dataset: Dataset | None) -> None:
        cfg, env = self.cfg, self.env
        if train_dataset is None:
            train_dataset, built_eval = build_datasets(self.config)
            eval_dataset = eval_dataset if eval_dataset is not None else built_eval
        self.eval_dataset = eval_dataset
        pin = self.device.type == "cuda"
        common = dict(batch_size=cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, rank=env.rank,
                      world_size=env.world_size, pin_memory=pin)
        self.train_loader, self.sampler = train_loader(train_dataset, stream=0, **common)
        # ctx.train_loader: the same images in another order and other random crops (stream 1), for hooks
        # such as PiCIE's per-epoch k-means; it never shifts the training stream.
        self.aux_loader, self.aux_sampler = train_loader(train_dataset, stream=1, **common)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self.eval_loader = None
        if eval_dataset is not None:
            self.eval_loader = eval_loader(eval_dataset, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers,
                                           rank=env.rank, world_size=env.world_size, pin_memory=pin)
        # The number of classes comes from the labelled split's class names; without names it is the main K.
        self.class_names = getattr(eval_dataset, "class_names", None)
        self.n_classes = len(self.class_names) if self.class_names else self.method.eval_heads()["main"]

    def _wrap_ddp(self) -> nn.Module:
        if not self.env.enabled:
            return self.method
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(_StepModule(self.method), device_ids=device_ids,
                                       find_unused_parameters=self.cfg.find_unused_parameters)

    # -- resume ----------------------------------------------------------------------------------------
    def _load_checkpoint(self, ckpt: ckpt_io.Checkpoint) -> None:
        state = ckpt.state
        if state["method"] != self.config.method:
            raise CheckpointError(f"{ckpt.path / ckpt_io.STATE_FILE}: the checkpoint is of method "
                                  f"{state['method']!r}, the config asks for {self.config.method!r}")
        self._log_config_changes(state["config"])
        ckpt_io.load_model_state(self.method, ckpt)
        self.method.load_extra_state(state.get("extra_state") or {})
        try:
            self.optimizer.load_state_dict(ckpt.optimizer_state())
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt.path / ckpt_io.OPTIMIZER_SKELETON}: does not fit the method's "
                                  f"optimizer: {e}") from e
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        c = self.c
        c.step, c.epoch = int(state["step"]), int(state["epoch"])
        c.batch_in_epoch = self._resumed_batch_position(state)
        c.elapsed_s = float(state.get("elapsed_s", 0.0))
        metrics = state.get("metrics") or {}
        c.best_miou, c.best_step = metrics.get("best_miou"), metrics.get("best_step")
        c.last_eval, c.last_eval_step = metrics.get("eval"), metrics.get("eval_step")
        log_state = state.get("log") or {}
        c.window = dict(log_state.get("window") or {})
        c.window_steps = int(log_state.get("window_steps", 0))
        self._resume_log_lines = int(log_state.get("lines", 0))
        self._restored_rng = self._rng_for_this_rank(state.get("rng") or [], ckpt)
        log.info("resuming %s from step %d (epoch %d, batch %d)", self.run_dir, c.step, c.epoch, c.batch_in_epoch)

    def _log_config_changes(self, saved: dict[str, Any]) -> None:
        changes = _diff(saved, self.config.to_dict())
        for key, (old, new) in changes.items():
            log.warning("config changed on resume: %s: %r -> %r", key, old, new)

    def _resumed_batch_position(self, state: dict[str, Any]) -> int:
        saved_global = int(state.get("batch_size", self.cfg.batch_size)) * int(state.get("world_size", 1))
        global_batch = self.cfg.batch_size * self.env.world_size
        position = int(state.get("batch_in_epoch", 0))
        if saved_global != global_batch:
            log.warning("global batch changed on resume (%d -> %d images): the run continues at the nearest "
                        "batch and will not repeat the uninterrupted one exactly", saved_global, global_batch)
            position = position * saved_global // global_batch
        return position

    def _rng_for_this_rank(self, rngs: list[dict[str, Any]], ckpt: ckpt_io.Checkpoint) -> dict[str, Any] | None:
        if not rngs:
            log.warning("%s has no RNG state: randomness will differ from the uninterrupted run", ckpt.path)
            return None
        if len(rngs) != self.env.world_size:
            log.warning("checkpoint written by %d processes, resumed by %d: every rank takes RNG state %d",
                        len(rngs), self.env.world_size, 0)
            return rngs[0]
        return rngs[self.env.rank]

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> FitResult:
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.config.to_dict(), self.run_dir / CONFIG_FILE)
        barrier(self.env)
        self._clock, self._paused_s = time.monotonic(), 0.0  # the budget counts the loop, not the setup
        self._window_clock = (self._clock, 0.0)
        self._open_metrics_log()
        self._log_start()
        try:
            self.method.on_fit_start(self.ctx)
            if self._restored_rng is not None:  # after on_fit_start: randomness drawn there cannot shift the run
                ckpt_io.restore_rng(self._restored_rng, self.device)
            stopped = self._stop_reason(time_up=False, interrupt=False)
            while stopped is None and self.c.epoch < self.cfg.epochs:
                stopped = self._run_epoch()
            return self._finish(stopped or "completed")
        except NonFiniteLossError as e:
            self._event("non_finite", message=str(e))
            self._plot()
            raise

    def _open_metrics_log(self) -> None:
        if self.resume_from is not None:
            self.metrics.truncate(self._resume_log_lines)
        else:
            self.metrics.reset()

    def _log_start(self) -> None:
        amp = f"AMP {str(self.amp_dtype).removeprefix('torch.')}" if self.use_amp else "fp32"
        n_params = sum(p.numel() for p in self.method.parameters() if p.requires_grad)
        log.info("training %s (%.2fM parameters) on %s (%s), %d process(es), batch %d x %d, %d steps/epoch, "
                 "run dir %s", self.config.method, n_params / 1e6, self.device, amp, self.env.world_size,
                 self.cfg.batch_size, self.env.world_size, self.steps_per_epoch, self.run_dir)
        resumed = {} if self.resume_from is None else {"checkpoint": str(self.resume_from.path)}
        self._event("resume" if resumed else "start", method=self.config.method, device=str(self.device),
                    amp=self.use_amp, world_size=self.env.world_size, steps_per_epoch=self.steps_per_epoch,
                    total_steps=self.total_steps, **resumed)

    def _run_epoch(self) -> str | None:
        c, ctx = self.c, self.ctx
        self.sampler.set_epoch(c.epoch, start_batch=c.batch_in_epoch)
        # Also after a mid-epoch resume: on_epoch_end passes (PiCIE's centroid refit) read ctx.train_loader.
        self.aux_sampler.set_epoch(c.epoch)
        ctx.epoch = c.epoch
        if c.batch_in_epoch == 0:
            self.method.on_epoch_start(ctx)
        if self.progress is not None:
            self.progress.epoch_start(c.epoch, self.steps_per_epoch, c.batch_in_epoch)
        stopped = None
        if c.batch_in_epoch < self.steps_per_epoch:
            for batch in self.train_loader:
                flags = self._train_step(batch)
                stopped = self._after_step(**flags)
                if stopped:
                    break
        if self.progress is not None:
            self.progress.epoch_end()
        if c.batch_in_epoch >= self.steps_per_epoch:
            self._end_epoch()
        return stopped

    def _end_epoch(self) -> None:
        c = self.c
        self.method.on_epoch_end(self.ctx)
        c.epoch += 1
        c.batch_in_epoch = 0
        self.ctx.epoch = c.epoch
        every = self.cfg.eval_every
        improved = self._evaluate() if every and c.epoch % every == 0 else False
        self._save(last=True, best=improved)

    def _train_step(self, batch: dict[str, Any]) -> dict[str, bool]:
        c, ctx = self.c, self.ctx
        batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.model(batch) if self.env.enabled else self.method.training_step(batch, ctx)
        loss, logs = _split_output(out, self.config.method)
        values, flags = self._reduce_step_values(loss, logs)
        if not math.isfinite(values["loss"]):
            raise self._non_finite(f"the loss is {values['loss']}")
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        self.method.after_backward(ctx)
        if self.cfg.grad_clip is not None:
            norm = float(nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.grad_clip))
            if not math.isfinite(norm) and not self.scaler.is_enabled():  # fp16 overflow is the scaler's job
                raise self._non_finite(f"the gradient norm is {norm}")
            values["grad_norm"] = norm
        self._apply_lr_schedule()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        c.step += 1
        c.batch_in_epoch += 1
        ctx.step = c.step
        self.method.on_step_end(ctx)
        self._accumulate(values)
        return flags

    def _reduce_step_values(self, loss: torch.Tensor, logs: dict[str, Any]) -> tuple[dict[str, float],
                                                                                    dict[str, bool]]:
        """Mean over ranks of the loss and the method's logs, and whether any rank wants to stop (one
        all-reduce per step, before backward, so every rank takes the same decision)."""
        names = ["loss", *sorted(logs)]
        entries = [loss.detach().float().reshape(())]
        entries += [torch.as_tensor(logs[k], dtype=torch.float32, device=self.device).detach().reshape(())
                    for k in names[1:]]
        time_up = self.cfg.time_budget_s is not None and self._elapsed() >= self.cfg.time_budget_s
        interrupt = self.should_stop is not None and bool(self.should_stop())
        flags = torch.tensor([float(time_up), float(interrupt)], device=self.device)
        vector = torch.cat([torch.stack(entries).to(self.device), flags])
        all_reduce_sum_(vector, self.env)
        numbers = vector.tolist()
        world = self.env.world_size
        values = {name: numbers[i] / world for i, name in enumerate(names)}
        return values, {"time_up": numbers[-2] > 0, "interrupt": numbers[-1] > 0}

    def _after_step(self, *, time_up: bool, interrupt: bool) -> str | None:
        c, cfg = self.c, self.cfg
        if c.step % cfg.log_every == 0:
            self._flush_window()
        improved = False
        if cfg.eval_every_steps and c.step % cfg.eval_every_steps == 0:
            improved = self._evaluate()
        periodic = bool(cfg.checkpoint_every_steps) and c.step % cfg.checkpoint_every_steps == 0
        if periodic or improved:
            self._save(last=True, best=improved)
        return self._stop_reason(time_up=time_up or self._budget_spent(), interrupt=interrupt)

    def _budget_spent(self) -> bool:
        # A single process decides at once; under DDP the all-reduced flag of the next step decides for all.
        return not self.env.enabled and self.cfg.time_budget_s is not None and \
            self._elapsed() >= self.cfg.time_budget_s

    def _stop_reason(self, *, time_up: bool, interrupt: bool) -> str | None:
        if self.cfg.max_steps is not None and self.c.step >= self.cfg.max_steps:
            return "max_steps"
        if time_up:
            return "time_budget"
        if interrupt:
            return "interrupted"
        return None

    def _finish(self, reason: str) -> FitResult:
        c = self.c
        improved = evaluated = False
        if self.eval_loader is not None and c.last_eval_step != c.step:
            improved, evaluated = self._evaluate(), True
        # Re-save last after a final evaluation even at an already saved step: its state must hold the scores
        # (a resume compares new evaluations with best_miou) and the log lines written since.
        self._save(last=evaluated or self._last_saved_step != c.step, best=improved or self.eval_loader is None)
        c.elapsed_s = self._elapsed()
        self._event("end", reason=reason)
        log.info("stopped (%s) at step %d, epoch %d after %.1f s of training%s", reason, c.step, c.epoch,
                 c.elapsed_s, "" if c.best_miou is None else f"; best mIoU {c.best_miou:.4f} at step {c.best_step}")
        self._plot()
        return FitResult(run_dir=self.run_dir, step=c.step, epoch=c.epoch, stopped=reason, elapsed_s=c.elapsed_s,
                         best_miou=c.best_miou, best_step=c.best_step, last_eval=c.last_eval)

    def close(self) -> None:
        deterministic, benchmark, cudnn_deterministic = self._saved_flags
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        shutdown_distributed(self.env)

    # -- precision, lr ---------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _apply_lr_schedule(self) -> None:
        if self.cfg.lr_schedule == "constant" and not self.cfg.warmup_steps:
            return  # leave the lr alone: a method may schedule it itself
        factor = lr_factor(self.c.step, self.cfg, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def _non_finite(self, what: str) -> NonFiniteLossError:
        last = ckpt_io.checkpoint_dir(self.run_dir, "last")
        kept = (f"the last good checkpoint is {last} (step {self._last_saved_step})" if last is not None
                else "no checkpoint was written before it")
        return NonFiniteLossError(f"{what} at step {self.c.step + 1} (epoch {self.c.epoch}); training stopped "
                                  f"and nothing of this step was saved: {kept}. Try a lower method_config.lr, "
                                  "train.grad_clip, or train.amp=false")

    # -- time ------------------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self._elapsed_base + time.monotonic() - self._clock - self._paused_s

    @contextlib.contextmanager
    def _paused(self) -> Iterator[None]:
        """Evaluation and checkpoint writing do not count against the time budget or the throughput."""
        start = time.monotonic()
        try:
            yield
        finally:
            self._paused_s += time.monotonic() - start

    # -- logging ---------------------------------------------------------------------------------------
    def _accumulate(self, values: dict[str, float]) -> None:
        c = self.c
        for key, value in values.items():
            c.window[key] = c.window.get(key, 0.0) + value
        c.window_steps += 1
        if self.progress is not None:
            self.progress.step({"loss": values["loss"], "lr": self.optimizer.param_groups[0]["lr"],
                                "images": self.cfg.batch_size * self.env.world_size})

    def _flush_window(self) -> None:
        c = self.c
        if not c.window_steps:
            return
        record = {k: v / c.window_steps for k, v in c.window.items()}
        start, paused_at_start = self._window_clock
        seconds = time.monotonic() - start - (self._paused_s - paused_at_start)
        images = c.window_steps * self.cfg.batch_size * self.env.world_size
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["images_per_s"] = images / seconds if seconds > 0 else None
        self._write("train", record)
        c.window, c.window_steps = {}, 0
        self._window_clock = (time.monotonic(), self._paused_s)

    def _write(self, kind: str, record: dict[str, Any]) -> None:
        self.metrics.write({"kind": kind, "step": self.c.step, "epoch": self.c.epoch,
                            "elapsed_s": round(self._elapsed(), 3), **record})

    def _event(self, event: str, **fields: Any) -> None:
        self._write("event", {"event": event, **fields})

    def _hook_log(self, logs: dict[str, float]) -> None:
        self._write("hook", {k: float(v) for k, v in logs.items()})

    def _plot(self) -> None:
        if not self.env.is_main:
            return
        try:
            plot_curves(self.metrics.path, self.run_dir / CURVES_FILE, title=f"{self.config.method} "
                        f"({self.run_dir.name})")
        except Exception as e:  # a plotting problem must not lose a finished run
            log.warning("could not draw %s: %s", self.run_dir / CURVES_FILE, e)

    # -- evaluation ------------------------------------------------------------------------------------
    def _evaluate(self) -> bool:
        """Score the eval split; returns whether the main-head mIoU improved on the best so far."""
        if self.eval_loader is None:
            return False
        c = self.c
        with self._paused():
            self._sync_buffers()
            counts = cluster_confusions(self.method, self.eval_loader, device=self.device,
                                        n_classes=self.n_classes, autocast=self._autocast)
            for matrix in counts.values():
                all_reduce_sum_(matrix, self.env)
            scores = score_confusions(counts, class_names=self.class_names, warn=not self._warned_main_matching)
            self._warned_main_matching = True
        c.last_eval, c.last_eval_step = scores, c.step
        self._write("eval", scores)
        miou = scores.get("miou")
        log.info("eval at step %d: mIoU %s, pixel accuracy %s", c.step, _fmt(miou), _fmt(scores["pixel_accuracy"]))
        improved = miou is not None and (c.best_miou is None or miou > c.best_miou)
        if improved:
            c.best_miou, c.best_step = miou, c.step
        return improved

    def _sync_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) everywhere, so evaluation and checkpoints agree."""
        if self.env.enabled:
            import torch.distributed as dist

            for buffer in self.method.buffers():
                dist.broadcast(buffer, src=0)

    # -- checkpoints -----------------------------------------------------------------------------------
    def _save(self, *, last: bool, best: bool) -> None:
        if not (last or best):
            return
        with self._paused():
            self._sync_buffers()
            self._check_finite_weights()
            rngs = all_gather_objects(ckpt_io.capture_rng(self.device), self.env)
            if self.env.is_main:
                files = ckpt_io.encode_files(model_state=self.method.state_dict(),
                                             optimizer_state=self.optimizer.state_dict(), state=self._state(rngs))
                base = self.run_dir / ckpt_io.CHECKPOINTS_DIR
                for name, wanted in (("last", last), ("best", best)):
                    if wanted:
                        ckpt_io.write_checkpoint(base / name, files)
            barrier(self.env)
        if last:
            self._last_saved_step = self.c.step

    def _check_finite_weights(self) -> None:
        tensors = [*self.method.parameters(), *(b for b in self.method.buffers() if b.is_floating_point())]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise self._non_finite("the weights became non-finite (NaN/inf) after the step before")

    def _state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        c = self.c
        return {
            "format_version": ckpt_io.FORMAT_VERSION,
            "method": self.config.method,
            "config": self.config.to_dict(),
            "step": c.step,
            "epoch": c.epoch,
            "batch_in_epoch": c.batch_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.cfg.batch_size,
            "world_size": self.env.world_size,
            "elapsed_s": self._elapsed(),
            "metrics": {"eval": c.last_eval, "eval_step": c.last_eval_step, "best_miou": c.best_miou,
                        "best_step": c.best_step},
            "extra_state": self.method.extra_state(),
            "rng": rngs,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "log": {"lines": self.metrics.lines, "window": c.window, "window_steps": c.window_steps},
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _split_output(out: Any, method: str) -> tuple[torch.Tensor, dict[str, Any]]:
    if not isinstance(out, dict) or "loss" not in out:
        raise TypeError(f"{method}.training_step must return a dict with a 'loss' tensor, got {type(out).__name__}")
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"{method}.training_step returned a loss that is not a scalar tensor: {loss!r}")
    logs = {}
    for key, value in out.items():
        if key == "loss":
            continue
        if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, int | float):
            logs[key] = value
    return loss, logs


def _diff(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = {}
        for key in sorted(set(old) | set(new)):
            out.update(_diff(old.get(key), new.get(key), f"{prefix}{key}."))
        return out
    return {} if old == new else {prefix.rstrip("."): (old, new)}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


__all__ = ["FitResult", "NonFiniteLossError", "Progress", "fit", "lr_factor", "select_device"]
