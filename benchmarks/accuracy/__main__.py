"""``python -m benchmarks.accuracy`` (or ``python benchmarks/accuracy``) from the repository root."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/accuracy`: import from the repository, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from benchmarks.accuracy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
