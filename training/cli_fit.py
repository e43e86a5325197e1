"""``python -m training fit``: train a method from a preset, with overrides, a progress bar, and resume.

    python -m training fit --preset iic_neu --data /line/frames --eval-data samples/neu-seg --out runs/try1
    python -m training fit --preset iic_neu --data ../shared/data/neu-seg --split train \\
        --eval-data ../shared/data/neu-seg --eval-split calibration      # the preset's NEU-Seg splits
    python -m training fit --resume runs/try1 --set train.epochs=6      # continue (and extend) a run
    torchrun --nproc_per_node 2 -m training fit --preset ...           # DDP, one process per GPU

``--data DIR`` is a plain (recursive) folder of frames for every preset, labels unused, with the preset's crop and
channels; ``--eval-data DIR`` a labelled folder (DIR/images + DIR/masks), optional. ``--split`` / ``--eval-split``
read the folder as the preset's own dataset (its split file, e.g. NEU-Seg's) instead; see
``training.config.with_data_roots``.

The library (``training.engine.fit``) logs; the progress bar lives here. SIGTERM / Ctrl-C stop the run after the
current step with a checkpoint (a second Ctrl-C aborts at once).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from training import checkpoint as ckpt_io
from training.config import RunConfig, available_presets, dump_config, load_preset, load_yaml, resolve_run_config
from training.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"  # as training.engine.CONFIG_FILE (the engine is imported only to train)
RUNS_DIR = Path("runs")
PROGRESS_EVERY_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", metavar="NAME", help="a preset in training/presets (--list-presets) or a YAML path")
    parser.add_argument("--data", metavar="DIR",
                        help="training frames: a plain folder, read recursively, labels unused (mask files and "
                             "masks/ folders skipped), with the preset's crop and channels")
    parser.add_argument("--eval-data", metavar="DIR",
                        help="labelled frames scored during training (optional): DIR/images + DIR/masks, class "
                             "names from DIR/labels.txt")
    parser.add_argument("--split", metavar="NAME",
                        help="read --data as the preset's own dataset spec (e.g. NEU-Seg with the preset's split "
                             "file) and train on its split NAME")
    parser.add_argument("--eval-split", metavar="NAME",
                        help="read --eval-data as the preset's own data.eval spec (split file, class names) and "
                             "score its split NAME")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, dotted, value parsed as YAML (repeatable): "
                             "--set train.epochs=3 --set method_config.lr=1e-3")
    parser.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<preset>-<timestamp>)")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                        help="continue RUN_DIR from checkpoints/last with its saved config (--set still applies); "
                             "without RUN_DIR: --out, else the newest run under runs/")
    parser.add_argument("--fresh", action="store_true",
                        help="with --resume: when RUN_DIR has no checkpoint to resume from (killed before its first "
                             "one), start it again from step 0 with its config.yaml instead of failing")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, e.g. one that registers a custom method (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-presets", action="store_true", help="list the bundled presets and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    parser.add_argument("--progress-every", type=float, default=PROGRESS_EVERY_S, metavar="SECONDS",
                        help="without a terminal (a log file, a container): one progress line (step, images/s, "
                             f"loss, ETA) this often on stdout (default {PROGRESS_EVERY_S:g}); a bar on a terminal")


def run(args: argparse.Namespace) -> int:
    for module in args.plugin:
        _import_plugin(module)
    if args.list_presets:
        print("\n".join(available_presets()) or "(no presets)")
        return 0
    if args.fresh and args.resume is None:
        raise ConfigError("--fresh restarts a run named by --resume RUN_DIR that has no checkpoint; give --resume")
    resume = args.resume is not None
    if resume:
        config, run_dir, resume = _resume_config(args)
    else:
        config, run_dir = _fresh_config(args)
    if args.print_config:
        print(dump_config(config.to_dict()), end="")
        return 0
    if args.resume is None:
        config = _check_data(config, args.preset)
    elif not resume:
        log.warning("%s has no checkpoint to resume from: starting it again from step 0 with its config.yaml (--fresh)",
                    run_dir)
    if int(os.environ.get("RANK", "0")) != 0:  # DDP: rank 0 speaks for the job
        logging.getLogger().setLevel(logging.WARNING)
    stop = _StopRequest()
    progress = None if args.no_progress or int(os.environ.get("RANK", "0")) != 0 else make_progress(args)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from training.engine import fit

    try:
        with stop.installed(), logging_redirect_tqdm():
            result = fit(config, run_dir, resume=resume, progress=progress, should_stop=stop)
    except KeyboardInterrupt:  # the second Ctrl-C
        print(f"aborted; resume from the last checkpoint with --resume {run_dir}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        best = _best_summary(result)
        print(f"{result.stopped}: step {result.step}, epoch {result.epoch}{best}; run directory {result.run_dir}")
    return 0


def _best_summary(result: Any) -> str:
    if result.best_reason == "best_metric" and result.best_value is not None:
        return f", best {result.best_metric} {result.best_value:.4f} (step {result.best_step})"
    if result.best_reason == "final":
        return f", best = the final weights ({result.best_metric} did not move)"
    return ""


def _import_plugin(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"--plugin {module}: cannot import it ({e})") from e


def _fresh_config(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    if not args.preset:
        names = ", ".join(available_presets()) or "(none bundled)"
        raise ConfigError(f"--preset is required to start a run (bundled presets: {names}; or a YAML path)")
    config = resolve_run_config(load_preset(args.preset), overrides=args.overrides, data=args.data,
                                eval_data=args.eval_data, split=args.split, eval_split=args.eval_split)
    run_dir = Path(args.out) if args.out else default_run_dir(args.preset)
    return config, run_dir


def _resume_config(args: argparse.Namespace) -> tuple[RunConfig, Path, bool]:
    """The run's saved config and directory, and whether there is a checkpoint to resume (else ``--fresh``
    restarts it from its config.yaml)."""
    if args.preset:
        raise ConfigError("--resume continues a run with its saved config; drop --preset (use --set to change keys)")
    if isinstance(args.resume, str):
        run_dir = Path(args.resume)
        if args.out and Path(args.out) != run_dir:
            raise ConfigError(f"--resume {run_dir} and --out {args.out} name different runs")
    else:
        run_dir = Path(args.out) if args.out else latest_run()
    try:
        saved, resume = ckpt_io.resume_checkpoint(run_dir, warn=False).state["config"], True
    except CheckpointError as e:
        saved, resume = _restart_config(run_dir, e, args.fresh), False
    config = resolve_run_config(saved, overrides=args.overrides, data=args.data, eval_data=args.eval_data,
                                split=args.split, eval_split=args.eval_split)
    return config, run_dir, resume


def _restart_config(run_dir: Path, nothing: CheckpointError, fresh: bool) -> dict[str, Any]:
    config_file = run_dir / CONFIG_FILE
    if not fresh:
        hint = (f"; it was stopped before its first checkpoint: start it again from step 0 with its saved config "
                f"with --resume {run_dir} --fresh") if config_file.is_file() else ""
        raise CheckpointError(f"{nothing}{hint}") from None
    if not config_file.is_file():
        raise CheckpointError(f"{nothing}; and no {config_file} to start it again from (--fresh)") from None
    return load_yaml(config_file)


def _check_data(config: RunConfig, preset: str) -> RunConfig:
    """Training frames are required; a labelled split is optional: without one the run trains unscored."""
    if not config.train_data.spec.get("root"):
        raise ConfigError(f"give the training frames: --data DIR (preset {preset} names no data.train root)")
    if config.eval_data is not None and not config.eval_data.spec.get("root"):
        log.warning("preset %s scores a labelled split during training (data.eval), but no --eval-data was given: "
                    "training without evaluation, checkpoints/best will be the final weights. Give --eval-data DIR "
                    "(DIR/images + DIR/masks) to score one", preset)
        config = dataclasses.replace(config, eval_data=None)
    return config


def default_run_dir(preset: str, base: Path = RUNS_DIR) -> Path:
    stem = Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset
    candidate = base / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    n = 1
    while candidate.exists():
        candidate = base / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}-{n}"
        n += 1
    return candidate


def latest_run(base: Path = RUNS_DIR) -> Path:
    """The run under ``base`` whose last checkpoint is newest."""
    runs = []
    for run_dir in base.glob("*") if base.is_dir() else []:
        found = ckpt_io.checkpoint_dir(run_dir, "last")
        if found is not None:
            runs.append(((found / ckpt_io.MANIFEST).stat().st_mtime, run_dir))
    if not runs:
        raise ConfigError(f"--resume without RUN_DIR: no run with a checkpoint under {base}/; name the run")
    return max(runs)[1]


class _StopRequest:
    """Callable flag for ``fit(should_stop=...)``: set by the first SIGTERM/SIGINT; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s: stopping after this step with a checkpoint (Ctrl-C again to abort)",
                    signal.Signals(signum).name)

    def installed(self) -> Any:
        import contextlib

        @contextlib.contextmanager
        def handlers() -> Any:
            previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

        return handlers()


def make_progress(args: argparse.Namespace) -> TqdmProgress | LineProgress:
    """A bar on a terminal; progress lines on stdout otherwise (tqdm draws nothing there)."""
    if sys.stdout.isatty():
        return TqdmProgress()
    return LineProgress(args.progress_every)


class LineProgress:
    """Without a terminal: one flushed line every ``interval_s`` seconds of the run: steps done of the total,
    epoch, images/s and mean loss since the last line, and the ETA (from that rate, or the time budget if sooner).

    With a ``label`` it counts frames of another task instead (export's int8 calibration and verification): each
    ``step`` is one frame, and the line reads ``LABEL: done/total frames, frames/s, ETA``."""

    def __init__(self, interval_s: float = PROGRESS_EVERY_S, stream: Any = None,
                 clock: Any = time.monotonic, label: str | None = None):
        self.label = label
        self.interval_s = interval_s
        self.stream = stream
        self.clock = clock
        self.total: int | None = None
        self.epoch = 0
        self.deadline: float | None = None
        self._reset(clock())

    def begin(self, total_steps: int, step: int, time_left_s: float | None) -> None:
        self.total = total_steps
        self.deadline = None if time_left_s is None else self.clock() + time_left_s
        self._reset(self.clock())

    def epoch_start(self, epoch: int, total_batches: int, done_batches: int) -> None:
        self.epoch = epoch

    def step(self, values: dict[str, float]) -> None:
        self.steps += 1
        self.images += values.get("images", 0)
        self.loss_sum += values.get("loss", 0.0)
        now = self.clock()
        if now - self.since >= self.interval_s:
            print(self._line(int(values.get("step", 0)), now), file=self.stream or sys.stdout, flush=True)
            self._reset(now)

    def epoch_end(self) -> None:
        pass

    def _line(self, step: int, now: float) -> str:
        seconds = max(now - self.since, 1e-9)
        total = f"/{self.total}" if self.total else ""
        eta = None
        if self.total:
            eta = (self.total - step) * seconds / self.steps
        if self.deadline is not None:
            eta = max(0.0, self.deadline - now) if eta is None else min(eta, max(0.0, self.deadline - now))
        if self.label is not None:
            return f"{self.label}: {step}{total} frames, {self.images / seconds:.1f} frames/s, ETA {_duration(eta)}"
        rate = f"{self.images / seconds:.1f} images/s, " if self.images else ""  # a fit-only step trains on none
        return (f"step {step}{total}, epoch {self.epoch}: {rate}"
                f"loss {self.loss_sum / self.steps:.4f}, ETA {_duration(eta)}")

    def _reset(self, now: float) -> None:
        self.since, self.steps, self.images, self.loss_sum = now, 0, 0.0, 0.0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class TqdmProgress:
    """One bar per epoch: steps, smoothed loss, images/s."""

    def __init__(self, smoothing: float = 0.1, disable: bool | None = None):
        self.smoothing = smoothing
        self.disable = disable  # None: off when stderr is not a terminal
        self.bar: Any = None
        self.loss: float | None = None
        self.rate: float | None = None
        self.last = time.monotonic()

    def epoch_start(self, epoch: int, total_batches: int, done_batches: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total_batches, initial=done_batches, desc=f"epoch {epoch}", unit="step",
                        dynamic_ncols=True, disable=self.disable, file=sys.stderr)
        self.last = time.monotonic()

    def step(self, values: dict[str, float]) -> None:
        now = time.monotonic()
        seconds, self.last = now - self.last, now
        rate = values.get("images", 0) / seconds if seconds > 0 else 0.0
        self.loss = values["loss"] if self.loss is None else self._ema(self.loss, values["loss"])
        self.rate = rate if self.rate is None else self._ema(self.rate, rate)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.loss:.4f}", img_s=f"{self.rate:.1f}", refresh=False)
            self.bar.update(1)

    def begin(self, total_steps: int, step: int, time_left_s: float | None) -> None:
        pass  # tqdm's own rate and remaining time per epoch bar

    def epoch_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _ema(self, old: float, new: float) -> float:
        return (1 - self.smoothing) * old + self.smoothing * new
