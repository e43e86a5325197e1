"""The run's training clock: the time budget, ``elapsed_s`` and images/s count training, not evaluation or
checkpoint writing (they run inside :meth:`Stopwatch.paused`); :class:`EvalBudget` bounds evaluation's share."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Stopwatch:
    """Training seconds since :meth:`restart`, plus ``base_s`` (the time a resumed run had already trained)."""

    def __init__(self, base_s: float = 0.0):
        self.base_s = base_s
        self.restart()

    def restart(self) -> None:
        self._start = time.monotonic()
        self._paused_s = 0.0
        self._lap = (self._start, 0.0)  # (when the lap started, paused seconds by then)

    def elapsed(self) -> float:
        return self.base_s + time.monotonic() - self._start - self._paused_s

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self._paused_s += time.monotonic() - start

    def lap(self) -> float:
        """Training seconds since the previous lap (or the restart); starts the next lap."""
        now = time.monotonic()
        start, paused_at_start = self._lap
        self._lap = (now, self._paused_s)
        return now - start - (self._paused_s - paused_at_start)


class EvalBudget:
    """Bounds the share of the run's wall-clock that periodic evaluation takes (``train.eval_max_fraction``).

    Evaluating large labelled frames every N steps doubled a "600 s" run. :meth:`allows` says no while the
    evaluations of this process so far took more than ``fraction`` of training + evaluation time, so they become
    rarer instead of dominating. The first ``FREE_S`` seconds of evaluation are always allowed: short runs and
    cheap evaluations keep their exact schedule (a skip depends on timing, so it makes curves irreproducible).
    """

    FREE_S = 10.0

    def __init__(self, fraction: float | None, clock: Stopwatch):
        self.fraction = fraction
        self.clock = clock
        self.spent_s = 0.0  # evaluation wall-clock of this process
        self.last_s = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.last_s = time.monotonic() - start
            self.spent_s += self.last_s

    def share(self) -> float:
        """Evaluation's share of training + evaluation time since this process started the loop."""
        total = self.clock.elapsed() - self.clock.base_s + self.spent_s
        return self.spent_s / total if total > 0 else 0.0

    def allows(self) -> bool:
        return self.fraction is None or self.spent_s < self.FREE_S or self.share() <= self.fraction
