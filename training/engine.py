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

Read it top to bottom: :func:`fit` -> ``_Trainer.__init__`` (the setup, in the order resume relies on) ->
``run`` -> ``_run_epoch`` -> ``_train_step`` -> ``_after_step`` -> ``_evaluate`` / ``_save`` -> ``_finish``. What a
checkpoint saves of the loop and what resume restores is in ``training/checkpoint.py`` (``LoopState``,
``run_state``, ``restore_run``), the log window in ``training/metrics_log.py`` (``StepWindow``), the training
clock in ``training/stopwatch.py``, the loaders in ``training/loaders.py`` (``RunLoaders``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
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
from training.errors import ConfigError, TrainingError
from training.evaluation import EvaluationInterrupted, best_metric_name, cluster_confusions, score_confusions
from training.loaders import HookInterrupted, RunLoaders, StoppableLoader, seed_everything
from training.methods.base import FitContext, Method, build_method
from training.metrics_log import MetricsLog, StepWindow
from training.plots import plot_curves
from training.stopwatch import EvalBudget, Stopwatch

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
    stopped: str  # completed | max_steps | fitted | time_budget | interrupted
    elapsed_s: float  # training wall-clock (evaluation and checkpoint writing excluded)
    best_miou: float | None = None  # main-head mIoU of the evaluation that chose checkpoints/best
    best_step: int | None = None
    last_eval: dict[str, Any] | None = None
    best_metric: str | None = None  # the criterion (train.best_metric resolved)
    best_value: float | None = None
    best_reason: str | None = None  # best_metric | final (the criterion never moved) | no evaluation


class Progress(Protocol):
    """What the engine reports to a progress display (the CLI's tqdm bar or progress lines); only rank 0 reports.
    ``step`` values: ``loss``, ``lr``, ``images`` (global batch), ``step`` (optimiser steps done). A display may
    also have ``begin(total_steps, step, time_left_s)``, called once before the first step (``time_left_s``: what
    is left of ``train.time_budget_s``, or None), for an ETA."""

    def epoch_start(self, epoch: int, total_batches: int, done_batches: int) -> None: ...

    def step(self, values: dict[str, float]) -> None: ...

    def epoch_end(self) -> None: ...


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
    config = config if isinstance(config, RunConfig) else resolve_run_config(config)
    device = select_device(config.train.device)
    env = init_distributed(device.type)
    if env.enabled and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)  # one GPU per process
    try:
        with _torch_flags_restored():
            trainer = _Trainer(config, Path(run_dir), env, device, resume=resume, train_dataset=train_dataset,
                               eval_dataset=eval_dataset, progress=progress, should_stop=should_stop)
            return trainer.run()
    finally:
        shutdown_distributed(env)


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


class _Trainer:
    """One run. ``__init__`` builds what a step needs, in an order a resumed run repeats exactly (seed, method,
    optimiser, data, then the checkpoint); ``run`` is the loop, read top to bottom."""

    def __init__(self, config: RunConfig, run_dir: Path, env: DistEnv, device: torch.device, *, resume: bool,
                 train_dataset: Dataset | None, eval_dataset: Dataset | None, progress: Progress | None,
                 should_stop: Callable[[], bool] | None):
        self.config, self.cfg, self.env, self.device, self.should_stop = config, config.train, env, device, should_stop
        self.progress = progress if env.is_main else None
        self.run_dir = Path(broadcast_object(str(run_dir), env))
        resume_from = ckpt_io.resume_checkpoint(self.run_dir, warn=env.is_main) if resume else None
        if not resume:
            ckpt_io.refuse_used_run_dir(self.run_dir)
        self.precision = _Precision.setup(self.cfg, device)
        seed_everything(self.cfg.seed)
        self.method = _build_method(config, device, env)
        self.optimizer = self.method.configure_optimizer()
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.data = _loaders(config, self.method, device, env, train_dataset, eval_dataset)
        self.best_metric = best_metric_name(self.cfg.best_metric, self.method.eval_heads(), self.data.n_classes)
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE, enabled=env.is_main)
        self.resumed = resumed = None if resume_from is None else self._restore(resume_from)
        self.loop = resumed.loop if resumed else ckpt_io.LoopState()
        self._set_best_metric()
        self.window = resumed.window if resumed else StepWindow()
        self.clock = Stopwatch(resumed.elapsed_s if resumed else 0.0)
        self.eval_budget = EvalBudget(self.cfg.eval_max_fraction, self.clock)
        # Stop requests inside an evaluation or an epoch pass: one process only (under DDP every rank would have to
        # agree on the batch; there the run stops at the next step boundary)
        self._stop_inside = should_stop if should_stop is not None and not env.enabled else _never
        self.aux = StoppableLoader(self.data.aux, self._stop_inside)
        self.model = _wrap_ddp(self.method, env, device, self.cfg)
        self.ctx = FitContext(device=device, epoch=self.loop.epoch, step=self.loop.step,
                              train_loader=self.aux, rank=env.rank, world_size=env.world_size,
                              amp=self.precision.amp, log=self._hook_log, epochs=self.cfg.epochs,
                              steps_per_epoch=self.data.steps_per_epoch, total_steps=self.data.total_steps,
                              run_dir=self.run_dir,
                              all_reduce_sum=differentiable_all_reduce_sum if env.enabled else _identity)
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            self.model.module.ctx = self.ctx
        self._last_saved_step = self.loop.step if resumed else -1
        self._warned_main_matching = False
        self._interrupted_inside = False  # an evaluation or epoch pass ended early on a stop request
        self._partial_state = False  # ... an epoch pass: the method's state is half updated, never saved

    def _set_best_metric(self) -> None:
        loop = self.loop
        if loop.best_metric not in (None, self.best_metric):
            log.warning("checkpoints/best was chosen by %s, this run chooses by %s: its next evaluation starts "
                        "the comparison again", loop.best_metric, self.best_metric)
            loop.best_value = loop.metric_range = None
        loop.best_metric = self.best_metric

    def _restore(self, ckpt: ckpt_io.Checkpoint) -> ckpt_io.Resumed:
        resumed = ckpt_io.restore_run(ckpt, config=self.config.to_dict(), method=self.method,
                                      optimizer=self.optimizer, scaler=self.precision.scaler,
                                      batch_size=self.cfg.batch_size, rank=self.env.rank,
                                      world_size=self.env.world_size)
        loop = resumed.loop
        log.info("resuming %s from step %d (epoch %d, batch %d)", self.run_dir, loop.step, loop.epoch,
                 loop.batch_in_epoch)
        return resumed

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> FitResult:
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.config.to_dict(), self.run_dir / CONFIG_FILE)
        barrier(self.env)
        self.clock.restart()  # the budget counts the loop, not the setup
        if self.resumed is not None:
            self.metrics.truncate(self.resumed.log_lines)
        else:
            self.metrics.reset()
        self._log_start()
        try:
            self.method.on_fit_start(self.ctx)
            if self.resumed is not None and self.resumed.rng is not None:
                # after on_fit_start: randomness drawn there cannot shift the run
                ckpt_io.restore_rng(self.resumed.rng, self.device)
            if self.resumed is None:
                # step 0 is a checkpoint too: a run killed before its first periodic one (epoch passes, slow
                # first steps) can still be resumed, and repeats the uninterrupted run from here
                self._save(last=True, best=False)
            begin = getattr(self.progress, "begin", None)
            if begin is not None:
                budget = self.cfg.time_budget_s
                total = 1 if self.method.gradient_free else self.data.total_steps
                begin(total, self.loop.step, None if budget is None else budget - self.clock.elapsed())
            stopped = self._stop_reason(time_up=False, interrupt=False)
            while stopped is None and self.loop.epoch < self.cfg.epochs:
                stopped = self._run_epoch()
            return self._finish(stopped or "completed")
        except NonFiniteLossError as e:
            self._event("non_finite", message=str(e))
            self._plot()
            raise

    def _run_epoch(self) -> str | None:
        loop, ctx, data = self.loop, self.ctx, self.data
        data.sampler.set_epoch(loop.epoch, start_batch=loop.batch_in_epoch)
        # Also after a mid-epoch resume: on_epoch_end passes (PiCIE's centroid refit) read ctx.train_loader.
        data.aux_sampler.set_epoch(loop.epoch)
        ctx.epoch = loop.epoch
        if loop.batch_in_epoch == 0 and not self._epoch_start_hook():
            return "interrupted"
        if self.progress is not None:
            self.progress.epoch_start(loop.epoch, data.steps_per_epoch, loop.batch_in_epoch)
        stopped = None
        if loop.batch_in_epoch < data.steps_per_epoch:
            for batch in data.train:
                flags = self._train_step(batch)
                stopped = self._after_step(**flags)
                if stopped:
                    break
        if self.progress is not None:
            self.progress.epoch_end()
        if loop.batch_in_epoch >= data.steps_per_epoch:
            self._end_epoch()
        return stopped or ("interrupted" if self._interrupted_inside else None)

    def _epoch_start_hook(self) -> bool:
        """``on_epoch_start``; False when a stop request ended its pass over ``ctx.train_loader`` early. Its half
        updated state is not saved: ``last`` already holds this very position (written at step 0, at the end of
        the previous epoch, or resumed from), and a resume runs the hook again."""
        self.aux.armed = True
        try:
            self.method.on_epoch_start(self.ctx)
        except HookInterrupted:
            log.warning("stop requested during the epoch %d pass of on_epoch_start: stopping; the run resumes from "
                        "step %d and repeats the pass", self.loop.epoch, self.loop.step)
            self._interrupted_inside = self._partial_state = True
            return False
        finally:
            self.aux.armed = False
        return True

    def _train_step(self, batch: dict[str, Any]) -> dict[str, bool]:
        loop, ctx, cfg, scaler = self.loop, self.ctx, self.cfg, self.precision.scaler
        batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            out = self.model(batch) if self.env.enabled else self.method.training_step(batch, ctx)
        loss, logs = _split_output(out, self.config.method)
        values, flags = self._reduce_step_values(loss, logs)
        if not math.isfinite(values["loss"]):
            raise self._non_finite(f"the loss is {values['loss']}")
        scaler.scale(loss).backward()
        if scaler.is_enabled():
            scaler.unscale_(self.optimizer)
        self.method.after_backward(ctx)
        if cfg.grad_clip is not None:
            norm = float(nn.utils.clip_grad_norm_(self.method.parameters(), cfg.grad_clip))
            if not math.isfinite(norm) and not scaler.is_enabled():  # fp16 overflow is the scaler's job
                raise self._non_finite(f"the gradient norm is {norm}")
            values["grad_norm"] = norm
        if cfg.lr_schedule != "constant" or cfg.warmup_steps:  # else leave the lr alone: a method may schedule it
            factor = lr_factor(loop.step, cfg, self.data.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        scaler.step(self.optimizer)
        scaler.update()
        loop.step += 1
        loop.batch_in_epoch += 1
        ctx.step = loop.step
        self.method.on_step_end(ctx)
        self.window.add(values)
        if self.progress is not None:
            self.progress.step({"loss": values["loss"], "lr": self.optimizer.param_groups[0]["lr"],
                                "images": cfg.batch_size * self.env.world_size, "step": loop.step})
        return flags

    def _reduce_step_values(self, loss: torch.Tensor, logs: dict[str, Any]) -> tuple[dict[str, float],
                                                                                    dict[str, bool]]:
        """Mean over ranks of the loss and the method's logs, and whether any rank wants to stop (one
        all-reduce per step, before backward, so every rank takes the same decision)."""
        names = ["loss", *sorted(logs)]
        entries = [loss.detach().float().reshape(())]
        entries += [torch.as_tensor(logs[k], dtype=torch.float32, device=self.device).detach().reshape(())
                    for k in names[1:]]
        time_up = self.cfg.time_budget_s is not None and self.clock.elapsed() >= self.cfg.time_budget_s
        interrupt = self.should_stop is not None and bool(self.should_stop())
        flags = torch.tensor([float(time_up), float(interrupt)], device=self.device)
        vector = torch.cat([torch.stack(entries).to(self.device), flags])
        all_reduce_sum_(vector, self.env)
        numbers = vector.tolist()
        world = self.env.world_size
        values = {name: numbers[i] / world for i, name in enumerate(names)}
        return values, {"time_up": numbers[-2] > 0, "interrupt": numbers[-1] > 0}

    def _after_step(self, *, time_up: bool, interrupt: bool) -> str | None:
        loop, cfg = self.loop, self.cfg
        if loop.step % cfg.log_every == 0:
            self._write_train_line()
        improved = False
        if cfg.eval_every_steps and loop.step % cfg.eval_every_steps == 0 and self._eval_allowed():
            improved = self._evaluate()
        periodic = bool(cfg.checkpoint_every_steps) and loop.step % cfg.checkpoint_every_steps == 0
        if periodic or improved:
            self._save(last=True, best=improved)
        # A single process decides at once; under DDP the all-reduced flag of the next step decides for all.
        budget_spent = (not self.env.enabled and cfg.time_budget_s is not None
                        and self.clock.elapsed() >= cfg.time_budget_s)
        return self._stop_reason(time_up=time_up or budget_spent, interrupt=interrupt or self._interrupted_inside)

    def _stop_reason(self, *, time_up: bool, interrupt: bool) -> str | None:
        if self.method.gradient_free and self.loop.step >= 1:
            return "fitted"  # nothing left to learn: more steps would only repeat the monitoring score
        if self.cfg.max_steps is not None and self.loop.step >= self.cfg.max_steps:
            return "max_steps"
        if time_up:
            return "time_budget"
        if interrupt:
            return "interrupted"
        return None

    def _end_epoch(self) -> None:
        loop = self.loop
        self.method.on_epoch_end(self.ctx)
        loop.epoch += 1
        loop.batch_in_epoch = 0
        self.ctx.epoch = loop.epoch
        every = self.cfg.eval_every
        improved = self._evaluate() if every and loop.epoch % every == 0 and self._eval_allowed() else False
        self._save(last=True, best=improved)

    def _eval_allowed(self) -> bool:
        """Periodic evaluations stay within ``train.eval_max_fraction`` of the run's time (rank 0 decides)."""
        if self.data.evaluation is None:
            return False
        allowed = bool(broadcast_object(self.eval_budget.allows(), self.env))
        if not allowed:
            share = self.eval_budget.share()
            log.info("skipping the evaluation at step %d: evaluations took %.0f %% of the run so far "
                     "(train.eval_max_fraction %s)", self.loop.step, 100 * share, self.cfg.eval_max_fraction)
            self._event("eval_skipped", eval_share=round(share, 4))
        return allowed

    def _evaluate(self) -> bool:
        """Score the eval split; returns whether the main-head mIoU improved on the best so far."""
        if self.data.evaluation is None:
            return False
        loop = self.loop
        with self.clock.paused(), self.eval_budget.measure():
            self._sync_buffers()
            try:
                counts = cluster_confusions(self.method, self.data.evaluation, device=self.device,
                                            n_classes=self.data.n_classes, autocast=self.precision.autocast,
                                            should_stop=self._stop_inside)
            except EvaluationInterrupted:
                log.warning("stop requested during the evaluation at step %d: stopping without its scores", loop.step)
                self._interrupted_inside = True
                return False
            for matrix in counts.values():
                all_reduce_sum_(matrix, self.env)
            scores = score_confusions(counts, class_names=self.data.class_names,
                                      warn=not self._warned_main_matching)
            self._warned_main_matching = True
        loop.last_eval, loop.last_eval_step = scores, loop.step
        self._write("eval", {**scores, "eval_s": round(self.eval_budget.last_s, 3),
                             "eval_share": round(self.eval_budget.share(), 4)})
        criterion = "" if self.best_metric == "miou" else f", {self.best_metric} {_fmt(scores.get(self.best_metric))}"
        log.info("eval at step %d: mIoU %s, pixel accuracy %s%s", loop.step, _fmt(scores.get("miou")),
                 _fmt(scores["pixel_accuracy"]), criterion)
        return self._track_best(scores)

    def _track_best(self, scores: dict[str, Any]) -> bool:
        """Whether the criterion (``train.best_metric``) improved on the best so far (its range is kept too)."""
        loop = self.loop
        loop.n_evals += 1
        value = scores.get(self.best_metric)
        if value is None:
            return False
        low, high = loop.metric_range or (value, value)
        loop.metric_range = [min(low, value), max(high, value)]
        improved = loop.best_value is None or value > loop.best_value
        if improved:
            loop.best_value, loop.best_step, loop.best_reason = value, loop.step, "best_metric"
            loop.best_miou = scores.get("miou")
        return improved

    def _best_is_final(self) -> bool:
        """When the criterion never moved (or never had a value), no evaluation chose anything: the first one
        would be kept (step 100 of 1,430 on a binary line), so ``best`` becomes the final weights, said loudly."""
        loop = self.loop
        if self.data.evaluation is None:
            loop.best_step, loop.best_reason = loop.step, "no evaluation"
            return True
        if loop.n_evals == 0:
            return False  # stopped before any evaluation: keep what there is
        if loop.metric_range is not None:
            low, high = loop.metric_range
            if loop.n_evals < 2 or high - low > 1e-9:
                return False
        log.warning("%s did not move over %d evaluations (%s): checkpoints/best holds the final weights (step %d), "
                    "not the first evaluation's; set train.best_metric to a score that moves (e.g. over/miou, "
                    "defect_iou)", self.best_metric, loop.n_evals, loop.metric_range, loop.step)
        loop.best_step, loop.best_reason = loop.step, "final"
        loop.best_miou = (loop.last_eval or {}).get("miou") if loop.last_eval_step == loop.step else None
        return True

    def _save(self, *, last: bool, best: bool) -> None:
        if not (last or best):
            return
        with self.clock.paused():
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
            self._last_saved_step = self.loop.step

    def _finish(self, reason: str) -> FitResult:
        loop = self.loop
        improved = evaluated = False
        # A stop request skips the final evaluation: it must take seconds (the next run evaluates)
        if self.data.evaluation is not None and loop.last_eval_step != loop.step and reason != "interrupted":
            improved, evaluated = self._evaluate(), True
        # Re-save last after a final evaluation even at an already saved step: its state must hold the scores
        # (a resume compares new evaluations with best_miou) and the log lines written since.
        if not self._partial_state:
            final_best = not improved and self._best_is_final()
            self._save(last=evaluated or final_best or self._last_saved_step != loop.step, best=improved or final_best)
        elapsed = self.clock.elapsed()
        self._event("end", reason=reason)
        log.info("stopped (%s) at step %d, epoch %d after %.1f s of training%s", reason, loop.step, loop.epoch,
                 elapsed, "" if loop.best_value is None else f"; best {self.best_metric} {loop.best_value:.4f} at "
                 f"step {loop.best_step}")
        self._plot()
        return FitResult(run_dir=self.run_dir, step=loop.step, epoch=loop.epoch, stopped=reason, elapsed_s=elapsed,
                         best_miou=loop.best_miou, best_step=loop.best_step, last_eval=loop.last_eval,
                         best_metric=self.best_metric, best_value=loop.best_value, best_reason=loop.best_reason)

    # -- what the loop calls ---------------------------------------------------------------------------
    def _state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        scaler = self.precision.scaler
        return ckpt_io.run_state(config=self.config.to_dict(), loop=self.loop, elapsed_s=self.clock.elapsed(),
                                 steps_per_epoch=self.data.steps_per_epoch, batch_size=self.cfg.batch_size,
                                 world_size=self.env.world_size, extra_state=self.method.extra_state(), rngs=rngs,
                                 scaler=scaler.state_dict() if scaler.is_enabled() else None,
                                 log_lines=self.metrics.lines, window=self.window)

    def _check_finite_weights(self) -> None:
        tensors = [*self.method.parameters(), *(b for b in self.method.buffers() if b.is_floating_point())]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise self._non_finite("the weights became non-finite (NaN/inf) after the step before")

    def _non_finite(self, what: str) -> NonFiniteLossError:
        last = ckpt_io.checkpoint_dir(self.run_dir, "last")
        kept = (f"the last good checkpoint is {last} (step {self._last_saved_step})" if last is not None
                else "no checkpoint was written before it")
        return NonFiniteLossError(f"{what} at step {self.loop.step + 1} (epoch {self.loop.epoch}); training "
                                  f"stopped and nothing of this step was saved: {kept}. Try a lower "
                                  "method_config.lr, train.grad_clip, or train.amp=false")

    def _sync_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) everywhere, so evaluation and checkpoints agree."""
        if self.env.enabled:
            import torch.distributed as dist

            for buffer in self.method.buffers():
                dist.broadcast(buffer, src=0)

    def _write_train_line(self) -> None:
        if self.window.steps:
            self._write("train", self.window.take(lr=self.optimizer.param_groups[0]["lr"], seconds=self.clock.lap(),
                                                  images_per_step=self.cfg.batch_size * self.env.world_size))

    def _write(self, kind: str, record: dict[str, Any]) -> None:
        self.metrics.write({"kind": kind, "step": self.loop.step, "epoch": self.loop.epoch,
                            "elapsed_s": round(self.clock.elapsed(), 3), **record})

    def _event(self, event: str, **fields: Any) -> None:
        self._write("event", {"event": event, **fields})

    def _hook_log(self, logs: dict[str, float]) -> None:
        self._write("hook", {k: float(v) for k, v in logs.items()})

    def _log_start(self) -> None:
        precision, env = self.precision, self.env
        amp = f"AMP {str(precision.dtype).removeprefix('torch.')}" if precision.amp else "fp32"
        n_params = sum(p.numel() for p in self.method.parameters() if p.requires_grad)
        log.info("training %s (%.2fM parameters) on %s (%s), %d process(es), batch %d x %d, %d steps/epoch, "
                 "run dir %s", self.config.method, n_params / 1e6, self.device, amp, env.world_size,
                 self.cfg.batch_size, env.world_size, self.data.steps_per_epoch, self.run_dir)
        resumed = {} if self.resumed is None else {"checkpoint": str(self.resumed.checkpoint.path)}
        self._event("resume" if resumed else "start", method=self.config.method, device=str(self.device),
                    amp=precision.amp, world_size=env.world_size, steps_per_epoch=self.data.steps_per_epoch,
                    total_steps=self.data.total_steps, **resumed)

    def _plot(self) -> None:
        if not self.env.is_main:
            return
        try:
            plot_curves(self.metrics.path, self.run_dir / CURVES_FILE, title=f"{self.config.method} "
                        f"({self.run_dir.name})")
        except Exception as e:  # a plotting problem must not lose a finished run
            log.warning("could not draw %s: %s", self.run_dir / CURVES_FILE, e)


# -- what the trainer is built from --------------------------------------------------------------------------
@dataclass
class _Precision:
    """Autocast (CUDA only) and the GradScaler (enabled for float16 only: bfloat16 needs no loss scaling)."""

    amp: bool
    dtype: torch.dtype
    device_type: str
    scaler: torch.amp.GradScaler

    @classmethod
    def setup(cls, cfg: TrainConfig, device: torch.device) -> _Precision:
        """Also sets torch's process-wide determinism flags (``fit`` restores them at the end)."""
        amp = cfg.amp and device.type == "cuda"
        dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        if amp and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            log.warning("this GPU has no bfloat16: AMP falls back to float16 with loss scaling")
            dtype = torch.float16
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)  # ops without a deterministic kernel warn
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)
        return cls(amp=amp, dtype=dtype, device_type=device.type, scaler=scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


@contextlib.contextmanager
def _torch_flags_restored() -> Iterator[None]:
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    try:
        yield
    finally:
        deterministic, benchmark, cudnn_deterministic = saved
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic


def _build_method(config: RunConfig, device: torch.device, env: DistEnv) -> Method:
    # a copy: the method owns its config object, the RunConfig stays as resolved (config.yaml, checkpoints)
    method = build_method(config.method, copy.deepcopy(config.method_config)).to(device)
    if config.train.sync_batchnorm and env.enabled:
        if device.type != "cuda":
            log.warning("train.sync_batchnorm needs CUDA; BatchNorm stays per process")
        else:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    return method


def _loaders(config: RunConfig, method: Method, device: torch.device, env: DistEnv, train_dataset: Dataset | None,
             eval_dataset: Dataset | None) -> RunLoaders:
    if train_dataset is None:  # the datasets config.data describes; an eval_dataset given replaces its eval one
        train_dataset = config.train_data.build()
        built_eval = config.eval_data.build() if config.eval_data is not None and config.eval_data.spec else None
        eval_dataset = eval_dataset if eval_dataset is not None else built_eval
    return RunLoaders.build(train_dataset, eval_dataset, config.train, rank=env.rank, world_size=env.world_size,
                            pin_memory=device.type == "cuda", main_clusters=method.eval_heads()["main"])


def _wrap_ddp(method: Method, env: DistEnv, device: torch.device, cfg: TrainConfig) -> nn.Module:
    if not env.enabled:
        return method
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_StepModule(method), device_ids=device_ids,
                                   find_unused_parameters=cfg.find_unused_parameters)


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


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _never() -> bool:
    return False


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


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


__all__ = ["FitResult", "NonFiniteLossError", "Progress", "fit", "lr_factor", "select_device"]
