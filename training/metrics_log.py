"""``metrics.jsonl``: one JSON object per line, appended and flushed as the run goes.

Every line has ``kind`` (``train``, ``eval``, ``hook``, ``event``), ``step``, ``epoch`` and ``elapsed_s``. A
checkpoint records how many lines the log had when it was written (:attr:`MetricsLog.lines`); resume keeps
exactly those, dropping what the run that died wrote after it (and a torn last line), so the log of a resumed
run reads like the uninterrupted one with a ``resume`` event where it continued.

A ``train`` line holds the means of the step values over the steps since the previous one (:class:`StepWindow`);
a checkpoint keeps the window too, so a resumed run's lines average the same steps as the uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usseg_sdk.atomic import write_text_atomic


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (JSON has none), tensors and numpy scalars become floats."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends records to ``path``; a disabled log (DDP ranks other than 0) drops them."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.lines = 0  # lines written so far (including those kept from before a resume)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(_clean(record), allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
        self.lines += 1

    def reset(self) -> None:
        """Start an empty log (a fresh run in a directory that had one)."""
        if self.enabled:
            write_text_atomic(self.path, "")
        self.lines = 0

    def truncate(self, n_lines: int) -> None:
        """Keep the first ``n_lines`` complete lines (resume from a checkpoint taken when there were that many)."""
        if not self.enabled:
            return
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines()[:n_lines]:
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    break  # torn line of a killed writer
                kept.append(line)
        write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))
        self.lines = len(kept)


@dataclass
class StepWindow:
    """Sums of the per-step values (loss, the method's logs, grad_norm) since the last ``train`` line."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1

    def take(self, *, lr: float, seconds: float, images_per_step: int) -> dict[str, Any]:
        """The ``train`` line's values (means, lr, images/s over ``seconds``); empties the window."""
        record: dict[str, Any] = {k: v / self.steps for k, v in self.sums.items()}
        record["lr"] = lr
        record["images_per_s"] = self.steps * images_per_step / seconds if seconds > 0 else None
        self.sums, self.steps = {}, 0
        return record
