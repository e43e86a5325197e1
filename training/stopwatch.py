"""The run's training clock: the time budget, ``elapsed_s`` and images/s count training, not evaluation or
checkpoint writing (they run inside :meth:`Stopwatch.paused`)."""

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
