"""What the demo runs, from environment variables (``make demo`` passes them through).

    DEMO_METHOD    iic | ac | infoseg | picie | stego | anomaly (default: DEFAULT_METHOD)
    DEMO_PRESET    a preset name or YAML path      (default: METHODS[method].preset)
    DEMO_HEAD      main | over                      (default: METHODS[method].head)
    DEMO_STEPS     optimiser steps: the demo's work (default: METHODS[method].steps; 0: the cap alone)
    DEMO_CAP_S     training wall-clock safety cap   (default 900 s)
    DEMO_SEED      seed of the run                  (default 0)
    DEMO_THREADS   torch CPU threads                (default 1: see below)
    DEMO_OUT       output folder                    (default demo_out/ in the repository)

The number of steps is the demo's contract (issue 11): a busy machine takes longer, not fewer steps, so README's
numbers reproduce anywhere. ``DEMO_CAP_S`` only stops a run that would otherwise not end (several times the
about two minutes IIC's 280 steps take on an idle core); a run it stops is reported loudly as not matching README
and the demo exits with status 3. Switching a method to another preset (the pretrained trunk, say) is one line in
``METHODS``: preset, exported head and step count together.

One torch thread by default: a run then repeats bit for bit on a machine (given the same number of steps), and
on a shared machine two threads are several times slower than one, not faster (their synchronisation stalls when
other processes hold the cores).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "samples" / "neu-seg"


class DemoError(Exception):
    """The demo cannot run as configured (bad environment variable, missing sample); printed without traceback."""


@dataclass(frozen=True)
class MethodChoice:
    preset: str  # training/presets/<preset>.yaml, or a YAML path
    head: str  # exported head: "main" (K = classes, Hungarian) or "over" (over-clustering, many-to-one)
    steps: int  # optimiser steps of the default run (the contract), sized to ~2 minutes on an idle CPU core


# Chosen from `demo/compare_methods.py` on the bundled sample (numbers in the README and the demo's report).
METHODS: dict[str, MethodChoice] = {
    "iic": MethodChoice(preset="iic_cpu", head="over", steps=280),
    "ac": MethodChoice(preset="ac_scratch_cpu", head="main", steps=100),
    "infoseg": MethodChoice(preset="infoseg_scratch_cpu", head="main", steps=320),
    "picie": MethodChoice(preset="picie_scratch_cpu", head="main", steps=160),
    "stego": MethodChoice(preset="stego_cpu", head="main", steps=600),
    # no gradient steps: the memory bank is fitted at the first epoch start, and the engine stops after one step
    "anomaly": MethodChoice(preset="anomaly_cpu", head="main", steps=1),
}
DEFAULT_METHOD = "iic"
HEADS = ("main", "over")
DEFAULT_CAP_S = 900.0  # a safety cap, not a budget: 280 IIC steps take about 120 s on an idle core


@dataclass(frozen=True)
class DemoSettings:
    method: str
    preset: str
    head: str
    cap_s: float  # training wall-clock safety cap
    steps: int | None  # the contract; None: the cap alone stops the run
    seed: int
    threads: int
    out: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> DemoSettings:
        env = dict(os.environ if env is None else env)
        method = env.get("DEMO_METHOD", "").strip().lower() or DEFAULT_METHOD
        if method not in METHODS:
            raise DemoError(f"DEMO_METHOD={method!r}: choose one of {', '.join(METHODS)}")
        choice = METHODS[method]
        head = env.get("DEMO_HEAD", "").strip() or choice.head
        if head not in HEADS:
            raise DemoError(f"DEMO_HEAD={head!r}: choose one of {', '.join(HEADS)}")
        if env.get("DEMO_BUDGET_S", "").strip():
            raise DemoError("DEMO_BUDGET_S is gone: the demo trains for DEMO_STEPS steps (default "
                            f"{choice.steps} for {method}); DEMO_CAP_S is only a safety cap on the training time")
        steps = _number(env, "DEMO_STEPS", int, choice.steps)
        return cls(method=method, preset=env.get("DEMO_PRESET", "").strip() or choice.preset, head=head,
                   cap_s=_number(env, "DEMO_CAP_S", float, DEFAULT_CAP_S), steps=steps or None,
                   seed=_number(env, "DEMO_SEED", int, 0), threads=max(1, _number(env, "DEMO_THREADS", int, 1)),
                   out=Path(env.get("DEMO_OUT", "").strip() or ROOT / "demo_out").resolve())


def _number(env: dict[str, str], name: str, kind: type, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise DemoError(f"{name}={text!r} is not a number") from None
    if value < 0 or (name == "DEMO_CAP_S" and value == 0):
        raise DemoError(f"{name}={text!r} must be positive")
    return value
